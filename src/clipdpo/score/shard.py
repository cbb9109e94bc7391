"""Score one candidates shard: every image decoded and encoded once (a batch of decoded images in memory at a
time), every unique text (and, for the noun-level judge, every distinct object phrase) once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from clipdpo.images import Decoding
from clipdpo.schemas import SCORES
from clipdpo.score import judge
from clipdpo.score.qa_caption import question_to_caption
from clipdpo.score.scorer import ClipScorer


def _cosines(image_rows: np.ndarray, image_emb: np.ndarray, text_rows: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """cos for row i between image image_rows[i] and text text_rows[i] (NaN where either is -1)."""
    out = np.full(len(image_rows), np.nan, dtype=np.float32)
    ok = (image_rows >= 0) & (text_rows >= 0)
    if ok.any():
        out[ok] = np.einsum("ij,ij->i", image_emb[image_rows[ok]], text_emb[text_rows[ok]])
    return out


def phrase_scores(
    scorer: ClipScorer, captions: list[str | None], image_rows: np.ndarray, image_emb: np.ndarray
) -> np.ndarray:
    """Per row: its caption's object phrases scored against the row's image (each distinct phrase encoded once),
    pooled by the judge's phrase_pool; NaN for a row without a caption, an image or an object phrase."""
    unique = sorted({text for text in captions if text})
    phrases_of = dict(zip(unique, scorer.object_phrases(unique)))
    distinct = sorted({phrase for phrases in phrases_of.values() for phrase in phrases})
    phrase_emb = scorer.encode_texts(distinct) if distinct else np.zeros((0, 1), np.float32)
    index = {phrase: i for i, phrase in enumerate(distinct)}
    per_row = []
    for text, image_row in zip(captions, image_rows):
        phrases = phrases_of[text] if text and image_row >= 0 else []
        cosines = phrase_emb[[index[phrase] for phrase in phrases]] @ image_emb[image_row] if phrases else []
        per_row.append(scorer.scale(np.asarray(cosines, dtype=np.float32)))
    return judge.pooled_phrase_scores(per_row, scorer.config.judge.phrase_pool)


def caption_scores(
    scorer: ClipScorer, captions: list[str | None], image_rows: np.ndarray, image_emb: np.ndarray, whole: np.ndarray
) -> np.ndarray:
    """The judge's caption scores: `whole` (the captions' own scores), mixed with their object phrases' when the
    noun-level judge is on (JudgeConfig.phrase_weight > 0)."""
    weight = scorer.config.judge.phrase_weight
    if weight == 0:
        return whole
    pooled = phrase_scores(scorer, captions, image_rows, image_emb)
    return judge.combine_with_phrases(whole, pooled, weight).astype(np.float32)


@dataclass
class _Texts:
    """The texts of a shard's rows to score, one column each (None where a row has none)."""

    caption: list[str | None]
    question: list[str | None]
    qa_caption: list[str | None]
    qa_neg_caption: list[str | None]

    @classmethod
    def of(cls, rows: list[dict]) -> "_Texts":
        qa = [row["kind"] == "qa" and bool(row["question"]) for row in rows]
        return cls(
            caption=[row["text"] if row["kind"] == "caption" and row["text"] else None for row in rows],
            question=[row["question"] if is_qa else None for row, is_qa in zip(rows, qa)],
            qa_caption=[
                question_to_caption(row["question"], row["answer_pos"] or "") if is_qa else None
                for row, is_qa in zip(rows, qa)
            ],
            qa_neg_caption=[
                question_to_caption(row["question"], row["answer_neg"] or "") if is_qa else None
                for row, is_qa in zip(rows, qa)
            ],
        )

    def columns(self) -> tuple[list[str | None], ...]:
        return self.caption, self.question, self.qa_caption, self.qa_neg_caption


def embed_images(
    needed: list[str], images: pa.Table, scorer: ClipScorer, decoding: Decoding
) -> tuple[np.ndarray, dict[str, int]]:
    """Each needed image decoded (a batch at a time) and embedded exactly once, however many candidates it has:
    the embeddings and image id -> row; an image that does not decode is left out (counted by `decoding`)."""
    position = {image_id: i for i, image_id in enumerate(images.column("image_id").to_pylist())}
    encoded = images.column("image")
    decoded_ids: list[str] = []

    def each_image():
        pairs = (
            (image_id, encoded[position[image_id]].as_py() if image_id in position else None) for image_id in needed
        )
        for image_id, image in decoding.each(pairs):
            decoded_ids.append(image_id)
            yield image
            del image

    image_emb = scorer.encode_images(each_image(), total=len(needed))
    return image_emb, {image_id: i for i, image_id in enumerate(decoded_ids)}


def score_shard(candidates: pa.Table, images: pa.Table, scorer: ClipScorer) -> tuple[pa.Table, dict[str, Any]]:
    rows = candidates.to_pylist()
    needed = sorted({row["image_id"] for row in rows})
    decoding = Decoding(missing="not in the images shard")
    encodes_before, text_encodes_before = scorer.image_encodes, scorer.text_encodes
    image_emb, image_index = embed_images(needed, images, scorer, decoding)
    categories, category_scores = scorer.categorize(image_emb) if image_index else ([], np.zeros(0))
    category_of = {image_id: (categories[i], float(category_scores[i])) for image_id, i in image_index.items()}

    # Collect every text to score, then encode the unique ones once.
    texts = _Texts.of(rows)
    unique_texts = sorted({t for column in texts.columns() for t in column if t})
    text_emb = scorer.encode_texts(unique_texts) if unique_texts else np.zeros((0, 1), np.float32)
    text_index = {text: i for i, text in enumerate(unique_texts)}
    caption_set = sorted({t for t in texts.caption if t})  # only captions face the context rule
    token_count = dict(zip(caption_set, scorer.token_counts(caption_set)))
    image_rows = np.array([image_index.get(row["image_id"], -1) for row in rows], dtype=np.int64)

    def score_of(column: list[str | None]) -> np.ndarray:
        text_rows = np.array([text_index[t] if t else -1 for t in column], dtype=np.int64)
        return scorer.scale(_cosines(image_rows, image_emb, text_rows, text_emb))

    extra = {
        "clip_score": caption_scores(scorer, texts.caption, image_rows, image_emb, score_of(texts.caption)),
        "clip_tokens": [token_count[t] if t else None for t in texts.caption],
        "clip_context": [scorer.context_length] * len(rows),
        "n_words": [len(t.split()) if t else 0 for t in texts.caption],
        "category": [category_of.get(row["image_id"], (None, None))[0] for row in rows],
        "category_score": [category_of.get(row["image_id"], (None, None))[1] for row in rows],
        "question_score": score_of(texts.question),
        "qa_caption": texts.qa_caption,
        "qa_caption_score": score_of(texts.qa_caption),
        "qa_neg_caption_score": score_of(texts.qa_neg_caption),
    }
    columns = {name: candidates.column(name) for name in candidates.column_names}
    table = pa.table({**columns, **{name: pa.array(values, SCORES.field(name).type) for name, values in extra.items()}})
    table = table.filter(pa.array(image_rows >= 0))  # rows of undecodable images cannot be scored
    stats = {
        "rows_in": len(rows),
        "rows_out": table.num_rows,
        "images": len(needed),
        "images_failed": len(decoding.failed),
        "image_encodes": scorer.image_encodes - encodes_before,
        "text_encodes": scorer.text_encodes - text_encodes_before,
        "texts_scored": sum(1 for column in texts.columns() for t in column if t),
        "failed_image_ids": sorted(decoding.failed)[:20],
    }
    return table.select(SCORES.names), stats
