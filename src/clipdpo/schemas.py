"""Column schemas of every artifact kind (README, Artifacts) and their validation."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),  # dataset name
        ("uri", pa.string()),  # where the image came from
        ("image", pa.binary()),  # encoded bytes (JPEG/PNG), decoded by each consumer
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

CANDIDATES = pa.schema(
    [
        ("image_id", pa.string()),
        ("candidate_id", pa.string()),
        ("kind", pa.string()),  # "caption" | "qa"
        ("model", pa.string()),
        ("prompt_id", pa.int32()),
        ("prompt", pa.string()),
        ("text", pa.string()),  # caption text; null for qa rows
        ("question", pa.string()),  # qa rows only
        ("answer_pos", pa.string()),
        ("answer_neg", pa.string()),
        ("temperature", pa.float32()),
        ("top_p", pa.float32()),
        ("max_new_tokens", pa.int32()),
        ("seed", pa.int64()),
    ]
)

SCORES = pa.schema(
    list(CANDIDATES)
    + [
        ("clip_score", pa.float32()),  # the judge's score (CLIP: 100 x cos(image, text)); captions only
        ("clip_tokens", pa.int32()),  # CLIP tokenizer length incl. start/end tokens, untruncated
        ("clip_context", pa.int32()),  # the scorer's text context length
        ("n_words", pa.int32()),
        ("category", pa.string()),  # text | people | objects | scenes
        ("category_score", pa.float32()),
        ("question_score", pa.float32()),  # qa rows: the judge's score of (image, question)
        ("qa_caption", pa.string()),  # qa rows: question turned into a description + correct answer
        ("qa_caption_score", pa.float32()),
        ("qa_neg_caption_score", pa.float32()),  # same description + the wrong answer
    ]
)

PAIRS = pa.schema(
    [
        ("image_id", pa.string()),
        ("kind", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_score", pa.float32()),
        ("rejected_score", pa.float32()),
        ("margin", pa.float32()),
        ("image_uri", pa.string()),  # the images shard holding this image's bytes
    ]
)

# Reference-model log-probs of each good pair (train stage cache), keyed by pairs shard and row.
REFLOGPS = pa.schema(
    [
        ("pair_shard", pa.string()),
        ("row", pa.int32()),
        ("chosen_logp", pa.float64()),  # sum over response tokens
        ("rejected_logp", pa.float64()),
        ("chosen_logp_mean", pa.float64()),  # per-token mean (IPO)
        ("rejected_logp_mean", pa.float64()),
    ]
)

BY_KIND = {"images": IMAGES, "candidates": CANDIDATES, "scores": SCORES, "pairs": PAIRS, "reflogps": REFLOGPS}


class SchemaError(ValueError):
    """A table does not have the columns its artifact kind promises."""


def schema_for(kind: str) -> pa.Schema:
    try:
        return BY_KIND[kind]
    except KeyError:
        raise SchemaError(f"unknown artifact kind {kind!r}; expected one of {sorted(BY_KIND)}") from None


def validate_table(table: pa.Table, kind: str, where: str, columns: list[str] | None = None) -> pa.Table:
    """Check names and types of `table` against the kind's schema; return it in schema column order.

    `columns` checks only that subset (a partial read). `where` names the file in error messages.
    """
    expected = schema_for(kind)
    if columns is not None:
        unknown = [name for name in columns if name not in expected.names]
        if unknown:
            raise SchemaError(f"{where}: {unknown} are not columns of a {kind!r} artifact")
        expected = pa.schema([expected.field(name) for name in columns])
    present = {field.name: field for field in table.schema}
    missing = [name for name in expected.names if name not in present]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing} for a {kind!r} artifact (expected {expected.names})")
    for field in expected:
        found = present[field.name].type
        if not found.equals(field.type) and not (pa.types.is_null(found)):
            raise SchemaError(f"{where}: column {field.name!r} has type {found}, expected {field.type}")
    return table.select(expected.names).cast(expected)


def empty_table(kind: str) -> pa.Table:
    return schema_for(kind).empty_table()
