"""The judge's scores as pure functions of cosines: the scale each contrastive loss puts them on, and the
noun-level combination of a caption's score with its object phrases' scores.

Why these formulas: `JudgeConfig` (clipdpo.score.scorer), which chooses between them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# CLIP's learned temperature is capped at 100 (the paper's DFN ViT-H/14 sits at the cap): 100 x cos is its logit,
# the scale of the paper's thresholds.
CLIP_LOGIT_SCALE = 100.0


def clip_scores(cosines: np.ndarray) -> np.ndarray:
    """The paper's CLIP score: 100 x cos, in the cosines' own precision (float32 scores stay as they were)."""
    return CLIP_LOGIT_SCALE * np.asarray(cosines)


def siglip_scores(cosines: np.ndarray, logit_scale: float, logit_bias: float, offset: float) -> np.ndarray:
    """A SigLIP score on the filter's scale: its own logit t cos + b (t = exp(logit_scale param)), the log-odds that
    image and text match, shifted by `offset` so that even odds land on the CLIP score `offset`."""
    return logit_scale * np.asarray(cosines) + logit_bias + offset


# Pools over a caption's phrase scores (NaN-free, at least one score each).
POOLS: dict[str, Callable[[np.ndarray], float]] = {
    "min": lambda scores: float(np.min(scores)),
    "mean": lambda scores: float(np.mean(scores)),
}


def pooled_phrase_scores(phrase_scores: list[np.ndarray], pool: str) -> np.ndarray:
    """One number per caption from its phrases' scores (`pool`: min or mean); NaN for a caption without phrases."""
    if pool not in POOLS:
        raise ValueError(f"phrase pool {pool!r}: expected one of {sorted(POOLS)}")
    pooled = POOLS[pool]
    return np.array([pooled(scores) if len(scores) else np.nan for scores in phrase_scores], dtype=np.float64)


def combine_with_phrases(caption_scores: np.ndarray, pooled: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) x caption score + weight x pooled phrase score; the caption's own score where it has no phrase
    (pooled NaN) or no caption score (NaN stays NaN)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"phrase weight must be in [0, 1], got {weight}")
    caption_scores = np.asarray(caption_scores, dtype=np.float64)
    mixed = (1.0 - weight) * caption_scores + weight * pooled
    return np.where(np.isnan(pooled), caption_scores, mixed)
