"""GQA / TextVQA / ScienceQA answer rules, suite scoring and zero-shot matching, against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from clipdpo.evaluate.data import Item
from clipdpo.evaluate.suite import questions, scienceqa, vqa
from clipdpo.evaluate.suite.scoring import score
from clipdpo.evaluate.zeroshot import classify


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, final period stripped
        ("The answer is 3.5", "answer is 3.5"),  # a period between digits stays; articles go
        ("1,000", "1000"),  # commas are dropped before anything else
        ("dont know", "don't know"),  # contraction restored
        ("yes!", "yes"),  # '!' with no space beside it becomes a space
        ("red-white", "red white"),
        ("a - b", "b"),  # '-' next to a space is deleted; 'a' is an article
        ("the cat's toy", "cat 's toy"),  # "'s" split off, as EvalAI's tokenizer
        ("None", "0"),
        ("  Left\n", "left"),
    ],
)
def test_vqa_normalisation(raw, expected):
    assert vqa.normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_leave_one_out_by_hand():
    humans = ["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"]  # normalised: 3 x "2", 7 x "3"
    # "two" -> "2": annotators saying "2" see 2 others agreeing (2/3), the other 7 see 3 (capped at 1): 9/10
    assert vqa.vqa_accuracy("two", humans) == pytest.approx(0.9)
    assert vqa.vqa_accuracy("3.", humans) == pytest.approx(1.0)
    assert vqa.vqa_accuracy("4", humans) == 0.0
    # a single agreeing annotator: left out of its own count, 0/3, others see 1/3 -> (1 x 0 + 9 x 1/3) / 10
    assert vqa.vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "reply,gold,correct",
    [("Yes.", "yes", True), ("Left", "left", True), ("The table", "table", False), ("table..", "table", True)],
)
def test_gqa_exact_match_after_llava_conversion(reply, gold, correct):
    assert vqa.gqa_correct(reply, gold) is correct


@pytest.mark.parametrize(
    "reply,letter",
    [
        ("A", "A"),
        ("B. The cat", "B"),
        ("The answer is C.", "C"),
        ("I think the answer is C.", "FAILED"),
        ("The answer is A. The answer is B.", "FAILED"),
        ("b", "FAILED"),
        ("B.The cat", "FAILED"),
    ],
)
def test_scienceqa_reply_parsing(reply, letter):
    assert scienceqa.scienceqa_letter(reply) == letter


def test_scienceqa_letter_beyond_the_choices_is_wrong():
    assert scienceqa.scienceqa_correct("C", 2, 3) and not scienceqa.scienceqa_correct("E", 2, 3)
    assert not scienceqa.scienceqa_correct("D", 3, 3)  # D with 3 choices is no choice at all


def _items(rows):
    return [Item(id=str(i), image=f"{i}.jpg", prompt="", fields=row) for i, row in enumerate(rows)]


def test_suite_scores_by_hand():
    pope = _items(
        [
            {"answer": "yes", "category": "random"},
            {"answer": "no", "category": "random"},
            {"answer": "yes", "category": "adversarial"},
            {"answer": "no", "category": "adversarial"},
        ]
    )
    replies = {"0": "Yes", "1": "No", "2": "No, there is not.", "3": "No"}
    result = score("pope", pope, replies)
    # random: TP 1 TN 1 -> F1 1.0; adversarial: TP 0 FN 1 TN 1 -> F1 0; mean 50
    assert result["splits"]["random"]["f1"] == 1.0 and result["splits"]["adversarial"]["f1"] == 0.0
    assert result["headline"] == pytest.approx(50.0)

    textvqa = _items([{"answers": ["stop"] * 10}, {"answers": ["2"] * 3 + ["3"] * 7}])
    assert score("textvqa", textvqa, {"0": "Stop.", "1": "two"})["headline"] == pytest.approx(95.0)

    mmbench = _items(
        [
            {"index": 7, "answer": "A", "options": {}},
            {"index": 1_000_007, "answer": "B", "options": {}},
            {"index": 8, "answer": "C", "options": {}},
        ]
    )
    result = score("mmbench", mmbench, {"0": "A", "1": "A", "2": "C."})
    assert result["headline"] == pytest.approx(50.0) and result["vanilla_accuracy"] == 1.0

    with pytest.raises(ValueError, match="1 item\\(s\\) have no response"):
        score("gqa", _items([{"answer": "x"}, {"answer": "y"}]), {"0": "x"})


def test_prompts_follow_llava_eval():
    row = {"question": "Which one?", "choices": ["cat", "dog"], "hint": "Pets."}
    assert questions.prompt("scienceqa", row) == (
        "Context: Pets.\nWhich one?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
    )
    assert questions.prompt("gqa", {"question": "Is it red?"}) == (
        "Is it red?\nAnswer the question using a single word or phrase."
    )


def test_zero_shot_picks_the_nearest_class_text():
    classes = np.eye(3, dtype=np.float32)  # three orthogonal class texts
    captions = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.7, 0.7]], dtype=np.float32)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    assert classify(captions, classes).tolist() == [0, 2, 1]  # ties go to the first, as argmax


def test_zero_shot_datasets_load_from_folders_and_manifests(tmp_path, monkeypatch, eval_set):
    import json

    from clipdpo.evaluate.config import ZeroShotDataset
    from clipdpo.evaluate.data import EvalInputError
    from clipdpo.evaluate.zeroshot import load_dataset
    from clipdpo.storage import Storage

    storage = Storage()
    eval_set.write_zero_shot(storage, str(tmp_path / "folder"))
    monkeypatch.chdir(tmp_path)
    items, names = load_dataset(storage, ZeroShotDataset(name="f", root="./folder"), "describe")
    assert [c.name for c in names] == ["blue square", "green square", "red square"]  # sorted, named by classes.json
    assert len(items) == 9 and items[0].fields == {"label": "c_blue", "class_index": 0}

    rows = [{"image": "a.jpg", "label": "zebra"}, {"image": "b.jpg", "label": "ant"}]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, names = load_dataset(
        storage, ZeroShotDataset(name="m", root=str(tmp_path / "m"), layout="manifest"), "describe"
    )
    assert [c.name for c in names] == ["ant", "zebra"] and [i.fields["class_index"] for i in items] == [1, 0]
    assert items[0].image == str(tmp_path / "m" / "a.jpg")

    (tmp_path / "m" / "manifest.jsonl").write_text('{"image": "a.jpg"}\n')
    with pytest.raises(EvalInputError, match=r"manifest\.jsonl:1: field 'label' is missing"):
        load_dataset(storage, ZeroShotDataset(name="m", root=str(tmp_path / "m"), layout="manifest"), "describe")


def test_zero_shot_class_descriptions_are_prompt_ensembled(tmp_path):
    """classes.json may give a class several descriptions: its embedding is the normalised mean of theirs."""
    import json

    import numpy as np

    from clipdpo.evaluate.config import ZeroShotConfig, ZeroShotDataset
    from clipdpo.evaluate.data import EvalInputError
    from clipdpo.evaluate.zeroshot import class_embeddings, classify, load_dataset
    from clipdpo.storage import Storage

    for label in ("ball", "cup"):
        (tmp_path / "zs" / label).mkdir(parents=True)
        (tmp_path / "zs" / label / "x.png").write_bytes(b"png")
    (tmp_path / "zs" / "classes.json").write_text(json.dumps({"ball": ["red ball", "blue ball"], "cup": "cup"}))
    storage = Storage()
    _, classes = load_dataset(storage, ZeroShotDataset(name="z", root=str(tmp_path / "zs")), "describe")
    assert [(c.name, c.descriptions) for c in classes] == [("red ball", ("red ball", "blue ball")), ("cup", ("cup",))]

    vectors = {"a red ball.": [1.0, 0.0, 0.0], "a blue ball.": [0.0, 1.0, 0.0], "a cup.": [0.6, 0.0, 0.8]}

    class Encoder:
        def encode(self, texts):
            return np.array([vectors[t] for t in texts])

    got = class_embeddings(classes, Encoder(), ZeroShotConfig(class_template="a {}."))
    # by hand: ball = (1, 1, 0) / sqrt(2); cup as given (already unit length)
    assert got.ravel().tolist() == pytest.approx([2**-0.5, 2**-0.5, 0.0, 0.6, 0.0, 0.8])

    # max pooling: a caption is as near a class as its nearest description; "a blue ball." sits on one of ball's
    nearest = class_embeddings(classes, Encoder(), ZeroShotConfig(class_template="a {}.", class_pooling="max"))
    assert nearest.shape == (2, 2, 3) and nearest[1, 1].tolist() == [0.6, 0.0, 0.8]  # cup padded with its own
    caption = np.array([[0.0, 0.8, 0.6]])  # cosine 0.8 with "a blue ball.", 0.48 with "a cup.", 0.57 with ball's mean
    assert classify(caption, nearest).tolist() == [0] and classify(caption, got).tolist() == [0]
    tilted = np.array([[0.5, 0.0, 0.866]])  # cosine 0.99 with "a cup.", 0.5 with "a red ball."
    assert classify(tilted, nearest).tolist() == [1]
    with pytest.raises(ValueError, match="class_pooling 'min'; expected 'mean' or 'max'"):
        ZeroShotConfig(class_pooling="min")

    (tmp_path / "zs" / "classes.json").write_text(json.dumps({"ball": []}))
    with pytest.raises(EvalInputError, match=r"classes\.json: class 'ball': expected a name or a non-empty list"):
        load_dataset(storage, ZeroShotDataset(name="z", root=str(tmp_path / "zs")), "describe")


def test_a_benchmark_may_ask_its_questions_without_llavas_instruction():
    """LLaVA-1.5 appends a short-answer (or option-letter) instruction; `instruction: ""` asks the question alone
    (POPE's own protocol), any other text replaces it."""
    from clipdpo.evaluate.config import LETTER_ANSWER, SHORT_ANSWER, Benchmark
    from clipdpo.evaluate.suite.questions import prompt

    row = {"question": "Is there a cat in the image?"}
    assert prompt("pope", row) == row["question"] + SHORT_ANSWER
    assert prompt("pope", row, "") == row["question"]
    assert prompt("pope", row, " Yes or no?") == row["question"] + " Yes or no?"
    choice = {"question": "Which?", "choices": ["a cat", "a dog"], "answer": 0}
    assert prompt("scienceqa", choice).endswith("B. a dog" + LETTER_ANSWER)
    assert prompt("scienceqa", choice, "").endswith("B. a dog")
    assert Benchmark(kind="pope", root="/b").instruction is None
