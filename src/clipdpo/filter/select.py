"""Apply the filtering rules to one scores shard: pairs table plus the funnel of removals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    pair_min_margin: float = 2.0
    pair_min_length_ratio: float = 0.75
    pairs_per_image: int = 1
    # Caption pairs are trained under the chosen caption's prompt unless a fixed one is set.
    caption_pair_prompt: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_keep_fraction <= 1.0:
            raise ValueError(f"text_keep_fraction must be in [0, 1], got {self.text_keep_fraction}")
        if not 0.0 <= self.pair_min_length_ratio <= 1.0:
            raise ValueError(f"pair_min_length_ratio must be in [0, 1], got {self.pair_min_length_ratio}")
        if self.pairs_per_image < 1:
            raise ValueError(f"pairs_per_image must be >= 1, got {self.pairs_per_image}")


# Columns the rules read (the filter never loads the others for rows it drops).
RULE_COLUMNS = [
    "image_id", "kind", "category", "clip_score", "clip_tokens", "clip_context", "n_words",
    "question_score", "qa_caption_score", "qa_neg_caption_score", "text", "question",
    "answer_pos", "answer_neg", "prompt",
]

# Funnel keys in the order the rules run; the report prints them in this order.
FUNNEL_ORDER = [
    "rows_in", "captions_in", "qa_in",
    "removed_text_downsample",
    "removed_caption_empty", "removed_caption_low_score", "removed_caption_too_long",
    "removed_qa_invalid", "removed_question_low_score", "removed_qa_check_low_score",
    "captions_kept", "qa_kept", "images_with_captions", "images_without_caption_pair",
    "caption_pairs", "qa_pairs",
]


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _equals(table: pa.Table, name: str, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(table.column(name), value), False).to_numpy(zero_copy_only=False)


def _nonempty(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    stripped = pc.utf8_trim_whitespace(column)
    return pc.fill_null(pc.greater(pc.utf8_length(stripped), 0), False).to_numpy(zero_copy_only=False)


def filter_shard(table: pa.Table, config: FilterConfig, image_uri: str) -> tuple[pa.Table, Counter]:
    """Pairs selected from one shard of scores, and how many rows each rule removed."""
    funnel: Counter = Counter()
    n = table.num_rows
    is_caption = _equals(table, "kind", "caption")
    is_qa = _equals(table, "kind", "qa")
    funnel["rows_in"] += n
    funnel["captions_in"] += int(is_caption.sum())
    funnel["qa_in"] += int(is_qa.sum())

    # Image ids as dictionary codes: one int per row, each distinct id kept once.
    encoded = pc.dictionary_encode(table.column("image_id")).combine_chunks()
    image_codes = encoded.indices.to_numpy(zero_copy_only=False)
    distinct_ids = encoded.dictionary
    alive = rules.downsample_mask_by_code(
        image_codes, distinct_ids.to_pylist, _equals(table, "category", config.text_category),
        config.text_keep_fraction, config.downsample_seed,
    )
    funnel["removed_text_downsample"] += int((~alive).sum())

    def apply(mask_ok: np.ndarray, rows: np.ndarray, key: str) -> None:
        nonlocal alive
        removed = alive & rows & ~mask_ok
        funnel[key] += int(removed.sum())
        alive = alive & ~removed

    # Captions: empty, low score, too long for CLIP's text context.
    apply(_nonempty(table, "text"), is_caption, "removed_caption_empty")
    clip_scores = _floats(table, "clip_score")
    apply(rules.at_least(clip_scores, config.caption_min_score), is_caption,
          "removed_caption_low_score")
    if config.drop_captions_over_clip_context:
        tokens = table.column("clip_tokens").fill_null(0).to_numpy(zero_copy_only=False)
        context = table.column("clip_context").fill_null(0).to_numpy(zero_copy_only=False)
        apply(rules.fits_context(tokens, context), is_caption, "removed_caption_too_long")

    # QA: a usable triple, a specific question, a correct answer the image supports.
    qa_valid = _nonempty(table, "question") & _nonempty(table, "answer_pos") & _nonempty(table, "answer_neg")
    same_answer = pc.fill_null(
        pc.equal(pc.utf8_lower(table.column("answer_pos")), pc.utf8_lower(table.column("answer_neg"))), False
    ).to_numpy(zero_copy_only=False)
    apply(qa_valid & ~same_answer, is_qa, "removed_qa_invalid")
    apply(rules.at_least(_floats(table, "question_score"), config.question_min_score), is_qa,
          "removed_question_low_score")
    apply(rules.at_least(_floats(table, "qa_caption_score"), config.qa_caption_min_score), is_qa,
          "removed_qa_check_low_score")

    caption_rows = np.flatnonzero(alive & is_caption)
    qa_rows = np.flatnonzero(alive & is_qa)
    funnel["captions_kept"] += len(caption_rows)
    funnel["qa_kept"] += len(qa_rows)

    # Caption pairs within each image.
    group = image_codes[caption_rows]
    n_groups = len(np.unique(group))
    pairs = rules.select_caption_pairs(
        group,
        clip_scores[caption_rows],
        table.column("n_words").fill_null(0).to_numpy(zero_copy_only=False)[caption_rows],
        min_margin=config.pair_min_margin,
        min_length_ratio=config.pair_min_length_ratio,
        pairs_per_group=config.pairs_per_image,
    )
    chosen = caption_rows[pairs.chosen]
    rejected = caption_rows[pairs.rejected]
    funnel["images_with_captions"] += n_groups
    funnel["images_without_caption_pair"] += n_groups - len(np.unique(group[pairs.chosen]))
    funnel["caption_pairs"] += len(chosen)
    funnel["qa_pairs"] += len(qa_rows)

    scores = table.column("clip_score")
    caption_prompt = (
        pa.array([config.caption_pair_prompt] * len(chosen), pa.string())
        if config.caption_pair_prompt is not None
        else table.column("prompt").take(chosen)
    )
    caption_pairs = pa.table(
        {
            "image_id": table.column("image_id").take(chosen),
            "kind": pa.array(["caption"] * len(chosen), pa.string()),
            "prompt": caption_prompt,
            "chosen": table.column("text").take(chosen),
            "rejected": table.column("text").take(rejected),
            "chosen_score": scores.take(chosen),
            "rejected_score": scores.take(rejected),
            "margin": pa.array(pairs.margin, pa.float32()),
            "image_uri": pa.array([image_uri] * len(chosen), pa.string()),
        },
        schema=PAIRS,
    )
    qa_chosen = table.column("qa_caption_score").take(qa_rows)
    qa_rejected = table.column("qa_neg_caption_score").take(qa_rows)
    qa_pairs = pa.table(
        {
            "image_id": table.column("image_id").take(qa_rows),
            "kind": pa.array(["qa"] * len(qa_rows), pa.string()),
            "prompt": table.column("question").take(qa_rows),
            "chosen": table.column("answer_pos").take(qa_rows),
            "rejected": table.column("answer_neg").take(qa_rows),
            "chosen_score": qa_chosen,
            "rejected_score": qa_rejected,
            "margin": pc.subtract(qa_chosen, qa_rejected),
            "image_uri": pa.array([image_uri] * len(qa_rows), pa.string()),
        },
        schema=PAIRS,
    )
    return pa.concat_tables([caption_pairs, qa_pairs]), funnel


_JSON_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")]
_RARE_CONTROL = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]"


def json_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each string as a JSON string literal (null -> null), escaped by Arrow kernels.

    A column holding rare control characters goes through json's C encoder instead.
    """
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pc.any(pc.match_substring_regex(column, _RARE_CONTROL)).as_py():
        from json.encoder import encode_basestring

        return pa.array([encode_basestring(v) if v is not None else "null" for v in column.to_pylist()], pa.string())
    out = column
    for raw, escaped in _JSON_ESCAPES:
        out = pc.replace_substring(out, raw, escaped)
    return pc.fill_null(pc.binary_join_element_wise('"', out, '"', ""), "null")


def trl_jsonl(pairs: pa.Table) -> bytes:
    """TRL-style preference rows: prompt / chosen / rejected, plus where the image is."""
    if pairs.num_rows == 0:
        return b""
    image_ref = pc.binary_join_element_wise(pairs.column("image_uri"), pairs.column("image_id"), "#")
    lines = pc.binary_join_element_wise(
        '{"prompt": ', json_strings(pairs.column("prompt")),
        ', "chosen": ', json_strings(pairs.column("chosen")),
        ', "rejected": ', json_strings(pairs.column("rejected")),
        ', "images": [', json_strings(image_ref),
        '], "image_id": ', json_strings(pairs.column("image_id")),
        ', "kind": ', json_strings(pairs.column("kind")),
        "}\n", "",
    )
    # The values buffer of a string array is its strings back to back: the whole file at once.
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    offset_type = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=offset_type)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[-1])]
