"""Paired bootstrap intervals of a model's effect (its metric minus the baseline's) over benchmark images.

A benchmark's metrics are functions of counts summed over its items (AMBER's counters, POPE's confusion
matrix per split, zero-shot's correct answers). `PerImage` holds those counts summed per image: every
item of an image (all sampled descriptions, every question about it) stays together, since they are not
independent. One resample draws the benchmark's images with replacement; the same draw is applied to the
baseline and the model (paired), both metrics are recomputed from the resampled sums by the benchmark's
own metric function, and their difference is one bootstrap delta. The 95% interval is the 2.5th and
97.5th percentiles of `resamples` deltas (numpy's default linear interpolation), from a seeded generator:
the same inputs give the same interval on every machine.

Cost: the resampled sums are one (resamples x images) @ (images x counts) product per model; only the
metric function runs per resample (in Python, so that a resample's number is exactly what the metric
function gives on the duplicated items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

DEFAULT_RESAMPLES = 1000
Measure = Callable[[dict[str, float]], dict[str, float | None]]  # summed counts -> named metric values


@dataclass(frozen=True)
class PerImage:
    """One row of summable counts per image; `start` is added to every sum (AMBER's metrics.txt values)."""

    images: list[str]
    columns: list[str]
    rows: np.ndarray  # (images, columns)
    start: dict[str, float]

    def __post_init__(self) -> None:
        if self.rows.shape != (len(self.images), len(self.columns)):
            raise ValueError(
                f"per-image counts: shape {self.rows.shape}, expected ({len(self.images)}, {len(self.columns)})"
            )
        if len(set(self.images)) != len(self.images):
            raise ValueError("per-image counts: an image appears twice")

    def totals(self, weights: np.ndarray) -> list[dict[str, float]]:
        """Summed counts (start included) for each row of `weights` (resamples x images: times drawn)."""
        summed = weights @ self.rows
        offset = np.array([self.start.get(c, 0.0) for c in self.columns])
        return [dict(zip(self.columns, (offset + row).tolist())) for row in summed]

    def aligned(self, images: list[str]) -> PerImage:
        """The same counts with the images in the order given (which must be the same set)."""
        if set(images) != set(self.images):
            raise ValueError(
                f"per-image counts: the models were scored on different images "
                f"({len(set(images) ^ set(self.images))} differ)"
            )
        position = {image: k for k, image in enumerate(self.images)}
        return PerImage(list(images), self.columns, self.rows[[position[i] for i in images]], self.start)

    def to_json(self) -> dict:
        return {"images": self.images, "columns": self.columns, "rows": self.rows.tolist(), "start": self.start}

    @classmethod
    def from_json(cls, data: dict) -> PerImage:
        rows = np.asarray(data["rows"], dtype=np.float64).reshape(len(data["images"]), len(data["columns"]))
        return cls(list(data["images"]), list(data["columns"]), rows, dict(data.get("start", {})))


def by_image(
    items: Iterable[tuple[str, Mapping[str, float]]], columns: list[str], start: dict[str, float] | None = None
) -> PerImage:
    """(image, counts of one item) pairs summed per image; images in first-seen order."""
    sums: dict[str, np.ndarray] = {}
    for image, counts in items:
        row = np.array([float(counts.get(c, 0.0)) for c in columns])
        sums[image] = sums[image] + row if image in sums else row
    rows = np.array(list(sums.values())) if sums else np.zeros((0, len(columns)))
    return PerImage(list(sums), list(columns), rows.reshape(len(sums), len(columns)), dict(start or {}))


def resample_weights(images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images): how many times each image is drawn in each resample (images drawn with replacement)."""
    if images < 1 or resamples < 1:
        raise ValueError(f"bootstrap: needs at least one image and one resample, got {images} and {resamples}")
    drawn = np.random.default_rng(seed).integers(0, images, size=(resamples, images))
    flat = (drawn + images * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * images).reshape(resamples, images).astype(np.float64)


def paired_effects(
    base: PerImage, model: PerImage, measure: Measure, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, dict]:
    """Each metric of `measure`: {"delta": model - base on every image, "ci95": [lo, hi], "resamples", "images"}.
    A metric that is None for either model (on the full set or on some resample) gets ci95 None."""
    model = model.aligned(base.images)
    if base.columns != model.columns:
        raise ValueError(f"per-image counts: columns differ ({base.columns} vs {model.columns})")
    weights = resample_weights(len(base.images), resamples, seed)
    full = np.ones((1, len(base.images)))
    point_base, point_model = measure(base.totals(full)[0]), measure(model.totals(full)[0])
    sampled_base = [measure(t) for t in base.totals(weights)]
    sampled_model = [measure(t) for t in model.totals(weights)]
    out: dict[str, dict] = {}
    for name, base_value in point_base.items():
        model_value = point_model.get(name)
        if base_value is None or model_value is None:
            continue
        deltas = [_difference(m.get(name), b[name]) for b, m in zip(sampled_base, sampled_model)]
        interval = None
        if None not in deltas:
            low, high = np.percentile(np.array(deltas), [2.5, 97.5])
            interval = [float(low), float(high)]
        out[name] = {
            "delta": _tidy(model_value - base_value),
            "ci95": None if interval is None else [_tidy(v) for v in interval],
            "resamples": resamples,
            "images": len(base.images),
        }
    return out


def _difference(model: float | None, base: float | None) -> float | None:
    """model - base; None when either is None (a metric undefined on that resample)."""
    return None if model is None or base is None else model - base


def _tidy(value: float) -> float:
    """Float noise of differences of rounded metrics (7.0 - 9.4 = -2.4000000000000004) dropped."""
    return round(float(value), 10)
