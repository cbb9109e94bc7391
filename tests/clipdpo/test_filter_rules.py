"""The paper's filter rules on hand-made score tables; expected pairs worked out by hand."""

import numpy as np
import pyarrow as pa
import pytest

from clipdpo.filter import rules
from clipdpo.filter.select import FilterConfig, filter_shard
from clipdpo.schemas import SCORES


def test_pairs_need_margin_above_threshold_and_similar_length():
    # One image, four captions.          scores     words
    #   0: 30.0, 10 words
    #   1: 33.5, 10 words   0-1: |3.5| > 2, ratio 1.0  -> ok, margin 3.5
    #   2: 36.0,  5 words   x-2: ratio 0.5 < 0.75      -> never
    #   3: 32.0,  8 words   0-3: 2.0 not > 2.0 -> no; 1-3: 1.5 -> no
    group = np.array([0, 0, 0, 0])
    score = np.array([30.0, 33.5, 36.0, 32.0])
    words = np.array([10, 10, 5, 8])
    pairs = rules.select_caption_pairs(group, score, words, min_margin=2.0, min_length_ratio=0.75)
    assert pairs.chosen.tolist() == [1]
    assert pairs.rejected.tolist() == [0]
    assert pairs.margin.tolist() == [3.5]


def test_top_pair_per_image_is_largest_margin_and_groups_are_independent():
    # image A rows 0,2,4 ; image B rows 1,3 (interleaved on purpose)
    group = np.array([0, 1, 0, 1, 0])
    score = np.array([29.0, 40.0, 35.0, 37.5, 31.0])
    words = np.array([12, 9, 12, 10, 11])
    # A: (0,2) 6.0, (0,4) 2.0 no, (2,4) 4.0 -> top (2 chosen, 0 rejected, 6.0)
    # B: (1,3) 2.5, ratio 9/10 -> (1 chosen, 3 rejected, 2.5)
    pairs = rules.select_caption_pairs(group, score, words, min_margin=2.0, min_length_ratio=0.75)
    assert list(zip(pairs.chosen, pairs.rejected, pairs.margin)) == [(2, 0, 6.0), (1, 3, 2.5)]
    top2 = rules.select_caption_pairs(group, score, words, min_margin=2.0, min_length_ratio=0.75, pairs_per_group=2)
    assert list(zip(top2.chosen, top2.rejected)) == [(2, 0), (2, 4), (1, 3)]


def test_no_pairs_for_single_or_empty_captions():
    assert (
        len(
            rules.select_caption_pairs(
                np.array([0]), np.array([30.0]), np.array([5]), min_margin=2, min_length_ratio=0.75
            ).chosen
        )
        == 0
    )
    pairs = rules.select_caption_pairs(
        np.array([0, 0]), np.array([30.0, 40.0]), np.array([0, 0]), min_margin=2, min_length_ratio=0.75
    )
    assert len(pairs.chosen) == 0  # empty texts: ratio 0


def test_at_least_treats_nan_as_failing():
    assert rules.at_least(np.array([27.9, 28.0, np.nan, 30.0]), 28.0).tolist() == [False, True, False, True]


def test_downsample_is_per_image_stable_and_near_fraction():
    ids = np.array([f"img{i}" for i in range(4000) for _ in range(2)])
    cats = np.array(["text" if i % 2 == 0 else "people" for i in range(4000) for _ in range(2)])
    keep = rules.downsample_mask(ids, cats, "text", 0.25, seed=7)
    assert keep[cats == "people"].all()
    assert (keep[0::2] == keep[1::2]).all()  # both rows of an image share the decision
    kept_fraction = keep[cats == "text"].mean()
    assert 0.22 < kept_fraction < 0.28
    again = rules.downsample_mask(ids[::-1], cats[::-1], "text", 0.25, seed=7)[::-1]
    assert (again == keep).all()  # independent of row order
    other_seed = rules.downsample_mask(ids, cats, "text", 0.25, seed=8)
    assert (other_seed != keep).any()
    with pytest.raises(ValueError, match="keep_fraction"):
        rules.downsample_mask(ids, cats, "text", 1.5, seed=0)


def _scores_table(rows):
    base = {name: None for name in SCORES.names}
    full = [{**base, **row} for row in rows]
    return pa.Table.from_pylist(full, schema=SCORES)


def cap(image, text, score, category="objects", tokens=20, prompt="Describe the image."):
    return dict(
        image_id=image,
        kind="caption",
        text=text,
        clip_score=score,
        clip_tokens=tokens,
        clip_context=77,
        n_words=len(text.split()),
        category=category,
        prompt=prompt,
    )


def qa(image, question, pos, neg, qscore, check, neg_check, category="objects"):
    return dict(
        image_id=image,
        kind="qa",
        question=question,
        answer_pos=pos,
        answer_neg=neg,
        question_score=qscore,
        qa_caption_score=check,
        qa_neg_caption_score=neg_check,
        category=category,
        prompt="qa",
    )


def test_filter_shard_applies_every_rule_and_counts_the_funnel():
    rows = [
        # image a: 28.0 stays (>= threshold), 27.9 dropped; pair (31.0 vs 28.0, margin 3.0)
        cap("a", "a dog on a red sofa", 31.0),
        cap("a", "a dog on a blue sofa", 28.0),
        cap("a", "a cat on a red sofa", 27.9),
        # image a: too long for CLIP's context (78 > 77 tokens) though it scores best
        cap("a", "a dog on a red sofa near", 40.0, tokens=78),
        # image b: only one caption survives -> no pair
        cap("b", "two people walking", 30.0, category="people"),
        cap("b", "", 35.0, category="people"),  # empty caption
        # QA rows on image a: kept / generic question / low check caption / invalid
        qa("a", "What color is the sofa?", "red", "green", 26.0, 30.0, 24.0),
        qa("a", "What is in the image?", "a dog", "a cat", 24.9, 31.0, 20.0),
        qa("a", "Is the dog sleeping?", "yes", "no", 27.0, 27.0, 26.0),
        qa("a", "What breed?", "poodle", "Poodle", 27.0, 30.0, 20.0),
    ]
    cfg = FilterConfig(text_keep_fraction=1.0)
    pairs, funnel = filter_shard(_scores_table(rows), cfg, "s3://x/images/data/part-00000.parquet")
    got = pairs.to_pylist()
    assert [(p["kind"], p["chosen"], p["rejected"]) for p in got] == [
        ("caption", "a dog on a red sofa", "a dog on a blue sofa"),
        ("qa", "red", "green"),
    ]
    assert got[0]["margin"] == pytest.approx(3.0)
    assert got[1]["prompt"] == "What color is the sofa?"
    assert got[1]["margin"] == pytest.approx(6.0)
    assert dict(funnel) == {
        "rows_in": 10,
        "captions_in": 6,
        "qa_in": 4,
        "removed_text_downsample": 0,
        "removed_caption_empty": 1,
        "removed_caption_low_score": 1,
        "removed_caption_too_long": 1,
        "removed_qa_invalid": 1,
        "removed_question_low_score": 1,
        "removed_qa_check_low_score": 1,
        "removed_qa_yes_no_balance": 0,
        "captions_kept": 3,
        "qa_kept": 1,
        "images_with_captions": 2,
        "images_without_caption_pair": 1,
        "caption_pairs": 1,
        "qa_pairs": 1,
    }


def test_yes_no_polarity_reads_the_first_word():
    answers = ["Yes", "yes, there is a dog.", "No.", "NO", "not really", "Nope", "", None, "two", "Yes!"]
    assert rules.yes_no_polarity(answers).tolist() == [1, 1, -1, -1, 0, 0, 0, 0, 0, 1]


def test_balance_keeps_the_majority_within_the_ratio_by_lowest_key_hash():
    polarity = np.array([-1, -1, 0, -1, 1, -1, -1, 1, 0])
    keys = [f"img{i}\nIs there a cup?" for i in range(len(polarity))]
    hashes = rules.hash_unit_interval([keys[i] for i in (0, 1, 3, 5, 6)], seed=0)
    by_hash = [(0, 1, 3, 5, 6)[j] for j in np.argsort(hashes)]
    for ratio, allowed in ((1.0, 2), (1.5, 3), (2.0, 4), (3.0, 5)):
        keep = rules.balance_yes_no_mask(polarity, keys, ratio, seed=0)
        assert set(np.flatnonzero(~keep)) == set(by_hash[allowed:]), ratio
        assert keep[[2, 4, 7, 8]].all()  # the minority and the other questions stay
    assert rules.balance_yes_no_mask(polarity, keys, 0.0, seed=0).all()  # 0: off
    # the same rows whatever their order
    order = np.arange(len(polarity))[::-1]
    reversed_keep = rules.balance_yes_no_mask(polarity[order], [keys[i] for i in order], 1.0, seed=0)
    assert (reversed_keep[::-1] == rules.balance_yes_no_mask(polarity, keys, 1.0, seed=0)).all()
    # no minority at all: the majority has nothing to balance against and goes
    assert rules.balance_yes_no_mask(np.array([-1, -1, 0]), ["a", "b", "c"], 1.0, seed=0).tolist() == [
        False,
        False,
        True,
    ]


def test_filter_shard_balances_yes_no_answers_and_counts_them():
    rows = [qa(f"i{k}", "Is there a book?", "No", "Yes", 27.0, 30.0, 20.0) for k in range(3)]
    rows += [
        qa("i9", "Is there a book?", "Yes", "No", 27.0, 30.0, 20.0),
        qa("i9", "What colour?", "red", "blue", 27.0, 30.0, 20.0),
    ]
    balanced, funnel = filter_shard(_scores_table(rows), FilterConfig(text_keep_fraction=1.0), "u")
    assert funnel["removed_qa_yes_no_balance"] == 2 and funnel["qa_pairs"] == 3
    assert sorted(p["chosen"] for p in balanced.to_pylist()) == ["No", "Yes", "red"]
    off, funnel = filter_shard(_scores_table(rows), FilterConfig(text_keep_fraction=1.0, qa_yes_no_max_ratio=0), "u")
    assert funnel["removed_qa_yes_no_balance"] == 0 and off.num_rows == 5


def test_text_category_downsampling_removes_whole_images():
    rows = [cap(f"t{i}", f"a sign that reads {i} now", 30.0 + (i % 2) * 5, category="text") for i in range(200)]
    cfg = FilterConfig(text_keep_fraction=0.0)
    pairs, funnel = filter_shard(_scores_table(rows), cfg, "u")
    assert pairs.num_rows == 0
    assert funnel["removed_text_downsample"] == 200


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="pair_min_length_ratio"):
        FilterConfig(pair_min_length_ratio=2.0)
    with pytest.raises(ValueError, match="pairs_per_image"):
        FilterConfig(pairs_per_image=0)
