"""Apply the filtering rules to one scores shard: pairs table plus the funnel of removals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipdpo import config as config_lib
from clipdpo.filter import rules
from clipdpo.schemas import PAIRS


@dataclass(frozen=True)
class FilterConfig:
    """Every threshold of Sec. 4.2; defaults are the paper's where it gives one."""

    text_category: str = "text"
    # The paper down-samples text images without saying by how much; half is our default.
    text_keep_fraction: float = 0.5
    downsample_seed: int = 0
    caption_min_score: float = 28.0
    drop_captions_over_clip_context: bool = True
    question_min_score: float = 25.0
    # "reject examples where the scores are low": the caption threshold is our default.
    qa_caption_min_score: float = 28.0
    # Ours: the yes/no questions' right answers kept within this ratio of each other, majority to minority, per
    # scores shard (shards are random slices of the images, so the balance holds overall); 0 turns it off.
    # rules.balance_yes_no_mask says why.
    qa_yes_no_max_ratio: float = 1.0
    pair_min_margin: float = 2.0
    pair_min_length_ratio: float = 0.75
    pairs_per_image: int = 1
    # Caption pairs are trained under the chosen caption's prompt unless a fixed one is set.
    caption_pair_prompt: str | None = None

    # Score thresholds may be any finite number (CLIP scores are 100 x a cosine); a margin below 0 would act as 0.
    RANGES = {
        "text_keep_fraction": config_lib.FRACTION,
        "downsample_seed": config_lib.SEED,
        "caption_min_score": config_lib.FINITE,
        "question_min_score": config_lib.FINITE,
        "qa_caption_min_score": config_lib.FINITE,
        "qa_yes_no_max_ratio": config_lib.NON_NEGATIVE,
        "pair_min_margin": config_lib.NON_NEGATIVE,
        "pair_min_length_ratio": config_lib.FRACTION,
        "pairs_per_image": config_lib.AT_LEAST_1,
    }

    def __post_init__(self) -> None:
        config_lib.check_ranges(self)


# Columns the rules read (the filter never loads the others for rows it drops).
RULE_COLUMNS = [
    "image_id",
    "kind",
    "category",
    "clip_score",
    "clip_tokens",
    "clip_context",
    "n_words",
    "question_score",
    "qa_caption_score",
    "qa_neg_caption_score",
    "text",
    "question",
    "answer_pos",
    "answer_neg",
    "prompt",
]

# Funnel keys in the order the rules run; the report prints them in this order.
FUNNEL_ORDER = [
    "rows_in",
    "captions_in",
    "qa_in",
    "removed_text_downsample",
    "removed_caption_empty",
    "removed_caption_low_score",
    "removed_caption_too_long",
    "removed_qa_invalid",
    "removed_question_low_score",
    "removed_qa_check_low_score",
    "removed_qa_yes_no_balance",
    "captions_kept",
    "qa_kept",
    "images_with_captions",
    "images_without_caption_pair",
    "caption_pairs",
    "qa_pairs",
]


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _equals(table: pa.Table, name: str, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(table.column(name), value), False).to_numpy(zero_copy_only=False)


def _nonempty(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    stripped = pc.utf8_trim_whitespace(column)
    return pc.fill_null(pc.greater(pc.utf8_length(stripped), 0), False).to_numpy(zero_copy_only=False)


class _Funnel:
    """The rows still alive after each rule, and how many each rule removed."""

    def __init__(self, alive: np.ndarray, counts: Counter):
        self.alive, self.counts = alive, counts

    def apply(self, mask_ok: np.ndarray, rows: np.ndarray, key: str) -> None:
        removed = self.alive & rows & ~mask_ok
        self.counts[key] += int(removed.sum())
        self.alive = self.alive & ~removed


def _caption_rules(table: pa.Table, config: FilterConfig, funnel: _Funnel, is_caption: np.ndarray) -> None:
    """Captions: empty, low score, too long for CLIP's text context."""
    funnel.apply(_nonempty(table, "text"), is_caption, "removed_caption_empty")
    funnel.apply(
        rules.at_least(_floats(table, "clip_score"), config.caption_min_score), is_caption, "removed_caption_low_score"
    )
    if config.drop_captions_over_clip_context:
        tokens = table.column("clip_tokens").fill_null(0).to_numpy(zero_copy_only=False)
        context = table.column("clip_context").fill_null(0).to_numpy(zero_copy_only=False)
        funnel.apply(rules.fits_context(tokens, context), is_caption, "removed_caption_too_long")


def _qa_rules(table: pa.Table, config: FilterConfig, funnel: _Funnel, is_qa: np.ndarray) -> None:
    """QA: a usable triple, a specific question, a correct answer the image supports."""
    qa_valid = _nonempty(table, "question") & _nonempty(table, "answer_pos") & _nonempty(table, "answer_neg")
    same_answer = pc.fill_null(
        pc.equal(pc.utf8_lower(table.column("answer_pos")), pc.utf8_lower(table.column("answer_neg"))), False
    ).to_numpy(zero_copy_only=False)
    funnel.apply(qa_valid & ~same_answer, is_qa, "removed_qa_invalid")
    funnel.apply(
        rules.at_least(_floats(table, "question_score"), config.question_min_score), is_qa, "removed_question_low_score"
    )
    funnel.apply(
        rules.at_least(_floats(table, "qa_caption_score"), config.qa_caption_min_score),
        is_qa,
        "removed_qa_check_low_score",
    )
    _yes_no_balance(table, config, funnel, is_qa)


def _yes_no_balance(table: pa.Table, config: FilterConfig, funnel: _Funnel, is_qa: np.ndarray) -> None:
    """The yes/no questions still alive, their right answers balanced (rules.balance_yes_no_mask); a question is
    keyed by its image and text, so a rerun keeps the same ones."""
    alive_qa = np.flatnonzero(funnel.alive & is_qa)
    polarity = rules.yes_no_polarity(table.column("answer_pos").take(alive_qa).to_pylist())
    images = table.column("image_id").take(alive_qa).to_pylist()
    questions = table.column("question").take(alive_qa).to_pylist()
    keys = [f"{image}\n{question}" for image, question in zip(images, questions)]
    kept = rules.balance_yes_no_mask(polarity, keys, config.qa_yes_no_max_ratio, config.downsample_seed)
    mask = np.ones(table.num_rows, dtype=bool)
    mask[alive_qa] = kept
    funnel.apply(mask, is_qa, "removed_qa_yes_no_balance")


def _pairs_table(kind: str, image_id, prompt, chosen, rejected, scores: tuple, image_uri: str) -> pa.Table:
    """Pairs of one kind in the PAIRS schema; `scores` is (chosen scores, rejected scores, margins)."""
    n = len(chosen)
    return pa.table(
        {
            "image_id": image_id,
            "kind": pa.array([kind] * n, pa.string()),
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_score": scores[0],
            "rejected_score": scores[1],
            "margin": scores[2],
            "image_uri": pa.array([image_uri] * n, pa.string()),
        },
        schema=PAIRS,
    )


def _caption_pairs(
    table: pa.Table,
    config: FilterConfig,
    image_codes: np.ndarray,
    caption_rows: np.ndarray,
    funnel: Counter,
    image_uri: str,
) -> pa.Table:
    """Chosen/rejected caption pairs within each image, by CLIP-score margin and length ratio."""
    group = image_codes[caption_rows]
    n_groups = len(np.unique(group))
    pairs = rules.select_caption_pairs(
        group,
        _floats(table, "clip_score")[caption_rows],
        table.column("n_words").fill_null(0).to_numpy(zero_copy_only=False)[caption_rows],
        min_margin=config.pair_min_margin,
        min_length_ratio=config.pair_min_length_ratio,
        pairs_per_group=config.pairs_per_image,
    )
    chosen, rejected = caption_rows[pairs.chosen], caption_rows[pairs.rejected]
    funnel["images_with_captions"] += n_groups
    funnel["images_without_caption_pair"] += n_groups - len(np.unique(group[pairs.chosen]))
    funnel["caption_pairs"] += len(chosen)
    prompt = (
        pa.array([config.caption_pair_prompt] * len(chosen), pa.string())
        if config.caption_pair_prompt is not None
        else table.column("prompt").take(chosen)
    )
    scores = table.column("clip_score")
    text = table.column("text")
    return _pairs_table(
        "caption",
        table.column("image_id").take(chosen),
        prompt,
        text.take(chosen),
        text.take(rejected),
        (scores.take(chosen), scores.take(rejected), pa.array(pairs.margin, pa.float32())),
        image_uri,
    )


def _qa_pairs(table: pa.Table, qa_rows: np.ndarray, funnel: Counter, image_uri: str) -> pa.Table:
    """One pair per kept question: right answer over wrong, scored by their check captions."""
    funnel["qa_pairs"] += len(qa_rows)
    chosen_score = table.column("qa_caption_score").take(qa_rows)
    rejected_score = table.column("qa_neg_caption_score").take(qa_rows)
    return _pairs_table(
        "qa",
        table.column("image_id").take(qa_rows),
        table.column("question").take(qa_rows),
        table.column("answer_pos").take(qa_rows),
        table.column("answer_neg").take(qa_rows),
        (chosen_score, rejected_score, pc.subtract(chosen_score, rejected_score)),
        image_uri,
    )


def filter_shard(table: pa.Table, config: FilterConfig, image_uri: str) -> tuple[pa.Table, Counter]:
    """Pairs selected from one shard of scores, and how many rows each rule removed."""
    counts: Counter = Counter()
    is_caption = _equals(table, "kind", "caption")
    is_qa = _equals(table, "kind", "qa")
    counts["rows_in"] += table.num_rows
    counts["captions_in"] += int(is_caption.sum())
    counts["qa_in"] += int(is_qa.sum())

    # Image ids as dictionary codes: one int per row, each distinct id kept once.
    encoded = pc.dictionary_encode(table.column("image_id")).combine_chunks()
    image_codes = encoded.indices.to_numpy(zero_copy_only=False)
    alive = rules.downsample_mask_by_code(
        image_codes,
        encoded.dictionary.to_pylist,
        _equals(table, "category", config.text_category),
        config.text_keep_fraction,
        config.downsample_seed,
    )
    counts["removed_text_downsample"] += int((~alive).sum())

    funnel = _Funnel(alive, counts)
    _caption_rules(table, config, funnel, is_caption)
    _qa_rules(table, config, funnel, is_qa)
    caption_rows = np.flatnonzero(funnel.alive & is_caption)
    qa_rows = np.flatnonzero(funnel.alive & is_qa)
    counts["captions_kept"] += len(caption_rows)
    counts["qa_kept"] += len(qa_rows)
    pairs = [
        _caption_pairs(table, config, image_codes, caption_rows, counts, image_uri),
        _qa_pairs(table, qa_rows, counts, image_uri),
    ]
    return pa.concat_tables(pairs), counts
