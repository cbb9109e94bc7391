"""Score one candidates shard: every image decoded and encoded once, every unique text once."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from clipdpo.schemas import SCORES
from clipdpo.score.qa_caption import question_to_caption
from clipdpo.score.scorer import ClipScorer, decode_image

log = logging.getLogger("clipdpo.score")


def _cosine_scores(image_rows: np.ndarray, image_emb: np.ndarray, text_rows: np.ndarray,
                   text_emb: np.ndarray) -> np.ndarray:
    """100 x cos for row i between image image_rows[i] and text text_rows[i] (NaN where either is -1)."""
    out = np.full(len(image_rows), np.nan, dtype=np.float32)
    ok = (image_rows >= 0) & (text_rows >= 0)
    if ok.any():
        out[ok] = 100.0 * np.einsum("ij,ij->i", image_emb[image_rows[ok]], text_emb[text_rows[ok]])
    return out


def score_shard(candidates: pa.Table, images: pa.Table, scorer: ClipScorer) -> tuple[pa.Table, dict[str, Any]]:
    rows = candidates.to_pylist()
    needed = sorted({row["image_id"] for row in rows})
    image_bytes = dict(zip(images.column("image_id").to_pylist(), images.column("image").to_pylist()))

    # Decode and encode each image exactly once, however many candidates it has.
    decoded, failed = [], {}
    for image_id in needed:
        data = image_bytes.get(image_id)
        if data is None:
            failed[image_id] = "not in the images shard"
            continue
        try:
            decoded.append((image_id, decode_image(data)))
        except Exception as err:  # PIL raises many types for corrupt data
            failed[image_id] = f"cannot decode: {err}"
    for image_id, reason in list(failed.items())[:20]:
        log.warning("image %s skipped: %s", image_id, reason)
    encodes_before = scorer.image_encodes
    image_emb = scorer.encode_images([image for _, image in decoded])
    image_index = {image_id: i for i, (image_id, _) in enumerate(decoded)}
    categories, category_scores = scorer.categorize(image_emb) if decoded else ([], np.zeros(0))

    # Collect every text to score, then encode the unique ones once.
    qa_captions, qa_neg_captions = [], []
    for row in rows:
        if row["kind"] == "qa" and row["question"]:
            qa_captions.append(question_to_caption(row["question"], row["answer_pos"] or ""))
            qa_neg_captions.append(question_to_caption(row["question"], row["answer_neg"] or ""))
        else:
            qa_captions.append(None)
            qa_neg_captions.append(None)
    caption_texts = [row["text"] if row["kind"] == "caption" and row["text"] else None for row in rows]
    question_texts = [row["question"] if row["kind"] == "qa" and row["question"] else None for row in rows]
    unique_texts = sorted({t for column in (caption_texts, question_texts, qa_captions, qa_neg_captions)
                           for t in column if t})
    text_encodes_before = scorer.text_encodes
    text_emb = scorer.encode_texts(unique_texts) if unique_texts else np.zeros((0, 1), np.float32)
    text_index = {text: i for i, text in enumerate(unique_texts)}
    caption_set = sorted({t for t in caption_texts if t})  # only captions face the context rule
    token_count = dict(zip(caption_set, scorer.token_counts(caption_set)))

    image_rows = np.array([image_index.get(row["image_id"], -1) for row in rows], dtype=np.int64)

    def score_of(texts: list[str | None]) -> np.ndarray:
        text_rows = np.array([text_index[t] if t else -1 for t in texts], dtype=np.int64)
        return _cosine_scores(image_rows, image_emb, text_rows, text_emb)

    category_of = {image_id: (categories[i], float(category_scores[i])) for image_id, i in image_index.items()}
    keep = image_rows >= 0
    columns = {name: candidates.column(name) for name in candidates.column_names}
    extra = {
        "clip_score": score_of(caption_texts),
        "clip_tokens": [token_count[t] if t else None for t in caption_texts],
        "clip_context": [scorer.context_length] * len(rows),
        "n_words": [len(t.split()) if t else 0 for t in caption_texts],
        "category": [category_of.get(row["image_id"], (None, None))[0] for row in rows],
        "category_score": [category_of.get(row["image_id"], (None, None))[1] for row in rows],
        "question_score": score_of(question_texts),
        "qa_caption": qa_captions,
        "qa_caption_score": score_of(qa_captions),
        "qa_neg_caption_score": score_of(qa_neg_captions),
    }
    table = pa.table({**columns, **{name: pa.array(values, SCORES.field(name).type) for name, values in extra.items()}})
    table = table.filter(pa.array(keep))  # rows of undecodable images cannot be scored
    stats = {
        "rows_in": len(rows),
        "rows_out": table.num_rows,
        "images": len(needed),
        "images_failed": len(failed),
        "image_encodes": scorer.image_encodes - encodes_before,
        "text_encodes": scorer.text_encodes - text_encodes_before,
        "texts_scored": sum(1 for column in (caption_texts, question_texts, qa_captions, qa_neg_captions)
                            for t in column if t),
        "failed_image_ids": sorted(failed)[:20],
    }
    return table.select(SCORES.names), stats
