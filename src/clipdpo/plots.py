"""The run report's figures: plain data (lists, dicts) in, a matplotlib Figure out; `to_png` makes it bytes.

Each figure is built on its own `Figure` (no pyplot state, no display), so the functions are pure and
safe to call from any process. What each shows and why:
- `training_curves`: DPO's health view (loss, reward accuracy, margin, chosen/rejected log-prob change);
- `clip_scores`: how CLIP scores separate chosen from rejected, the margin against its threshold, per category;
- `filter_funnel`: rows each filter rule removed and what was kept;
- `caption_lengths`: chosen vs rejected length (a preference for longer captions is the length trap);
- `grouped_bars`: per-category numbers for several models side by side (AMBER base vs trained vs control);
- `rounds_curve`: a run of several rounds: each headline metric (with its intervals), pairs kept and caption CLIP
  scores per round.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

CHOSEN, REJECTED, THRESHOLD = "#1f77b4", "#d62728", "#333333"
MODEL_COLOURS = ("#7f7f7f", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def to_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    steps = [float(row["step"]) for row in rows if row.get(key) is not None]
    return steps, [float(row[key]) for row in rows if row.get(key) is not None]


def chosen_logps_warning(rows: Sequence[dict]) -> str | None:
    """A warning when the policy's log-prob of chosen captions ends below the reference's.

    DPO's implicit reward of the chosen caption is beta * (log pi - log pi_ref): its sign is the sign of
    the chosen log-prob's change since step 0 (the policy starts as the reference). Judged on the mean of
    the last quarter of steps (at least one), so one noisy step does not decide it."""
    _, chosen = _series(rows, "rewards/chosen")
    if not chosen:
        return None
    tail = chosen[-max(1, len(chosen) // 4) :]
    mean = sum(tail) / len(tail)
    if mean >= 0:
        return None
    return (
        f"chosen log-probs fell below the reference (mean chosen reward {mean:+.4f} over the last "
        f"{len(tail)} step(s)): the policy makes the preferred captions less likely too, and the margin "
        "comes from the rejected ones falling faster. A known DPO failure mode: check samples, "
        "consider a lower learning rate or a higher beta."
    )


def training_curves(rows: Sequence[dict], beta: float | None = None) -> Figure:
    """Per-step loss, reward accuracy, reward margin, and chosen/rejected log-prob change vs the reference.

    The log-prob change is rewards/beta (DPO's implicit reward divided by beta); without `beta` the
    panel shows the rewards themselves (same sign, same shape)."""
    figure = Figure(figsize=(11, 7))
    axes = figure.subplots(2, 2).ravel()
    for ax, key, title in (
        (axes[0], "loss", "loss"),
        (axes[1], "rewards/accuracy", "reward accuracy"),
        (axes[2], "rewards/margin", "reward margin (chosen - rejected)"),
    ):
        steps, values = _series(rows, key)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
    ax = axes[3]
    scale = 1.0 / beta if beta else 1.0
    for key, colour, label in (("rewards/chosen", CHOSEN, "chosen"), ("rewards/rejected", REJECTED, "rejected")):
        steps, values = _series(rows, key)
        ax.plot(steps, [v * scale for v in values], color=colour, label=label, marker="." if len(steps) < 30 else None)
    ax.axhline(0.0, color=THRESHOLD, linewidth=0.8, linestyle=":")
    ax.set_title("log-prob change vs reference" if beta else "implicit reward beta*(log pi - log pi_ref)")
    ax.set_xlabel("step")
    ax.legend()
    warning = chosen_logps_warning(rows)
    figure.suptitle(
        "WARNING: chosen log-probs are falling (see the report)" if warning else "DPO training",
        color="#c0151b" if warning else "black",
    )
    figure.tight_layout()
    return figure


def _bins(*samples: Sequence[float] | np.ndarray, count: int = 20) -> np.ndarray:
    values = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples if len(s)] or [np.zeros(1)])
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:  # one value: a bin of width 1 around it
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, count + 1)


def _no_data(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def clip_scores(
    chosen: Sequence[float],
    rejected: Sequence[float],
    margins: Mapping[str, Sequence[float]],
    threshold: float | None,
    by_category: Mapping[str, tuple[Sequence[float], Sequence[float]]],
) -> Figure:
    """Three panels: chosen vs rejected score histograms; margin histograms (one per entry of `margins`)
    with the filter's margin threshold drawn; mean chosen and rejected score per image category
    (`by_category`: category -> (chosen scores, rejected scores))."""
    figure = Figure(figsize=(15, 4))
    ax_scores, ax_margin, ax_category = figure.subplots(1, 3)
    if len(chosen) or len(rejected):
        bins = _bins(chosen, rejected)
        ax_scores.hist(chosen, bins=bins, alpha=0.6, color=CHOSEN, label=f"chosen (n={len(chosen)})")
        ax_scores.hist(rejected, bins=bins, alpha=0.6, color=REJECTED, label=f"rejected (n={len(rejected)})")
        ax_scores.set_title("CLIP score of the pairs' captions")
        ax_scores.set_xlabel("100 x cos(image, caption)")
        ax_scores.legend()
    else:
        _no_data(ax_scores, "CLIP score of the pairs' captions")
    present = {name: values for name, values in margins.items() if len(values)}
    if present:
        bins = _bins(*present.values(), *([[threshold]] if threshold is not None else []))
        for (name, values), colour in zip(present.items(), MODEL_COLOURS[1:]):
            ax_margin.hist(values, bins=bins, alpha=0.6, color=colour, label=f"{name} (n={len(values)})")
        if threshold is not None:
            ax_margin.axvline(threshold, color=THRESHOLD, linestyle="--", label=f"threshold {threshold:g}")
        ax_margin.set_title("score margin (chosen - rejected)")
        ax_margin.legend(fontsize="small")
    else:
        _no_data(ax_margin, "score margin (chosen - rejected)")
    categories = sorted(by_category)
    if categories:
        x = np.arange(len(categories))
        means = [
            [float(np.mean(by_category[c][i])) if len(by_category[c][i]) else np.nan for c in categories]
            for i in (0, 1)
        ]
        ax_category.bar(x - 0.2, means[0], width=0.4, color=CHOSEN, label="chosen")
        ax_category.bar(x + 0.2, means[1], width=0.4, color=REJECTED, label="rejected")
        ax_category.set_xticks(x, [f"{c}\n(n={len(by_category[c][0])})" for c in categories])
        ax_category.set_title("mean CLIP score per image category")
        ax_category.legend()
    else:
        _no_data(ax_category, "mean CLIP score per image category")
    figure.tight_layout()
    return figure


def filter_funnel(funnel: dict[str, float], order: Sequence[str]) -> Figure:
    """One horizontal bar per funnel counter in `order` (rules in the order they run); removals in red."""
    keys = [key for key in order if key in funnel] + sorted(key for key in funnel if key not in order)
    figure = Figure(figsize=(8, 0.35 * len(keys) + 1.2))
    ax = figure.subplots()
    values = [float(funnel[key]) for key in keys]
    colours = [REJECTED if key.startswith("removed_") else CHOSEN for key in keys]
    bars = ax.barh(range(len(keys)), values, color=colours)
    ax.set_yticks(range(len(keys)), [key.replace("_", " ") for key in keys])
    ax.invert_yaxis()  # first rule on top
    ax.bar_label(bars, labels=[f"{v:g}" for v in values], padding=3, fontsize="small")
    ax.set_title("filter funnel: rows in, rows each rule removed (red), rows and pairs kept")
    figure.tight_layout()
    return figure


def caption_lengths(chosen_words: Sequence[int], rejected_words: Sequence[int]) -> Figure:
    """Histograms of chosen and rejected caption length, and one dot per pair (rejected vs chosen length)
    against the diagonal: dots above it are pairs whose chosen caption is the longer one."""
    figure = Figure(figsize=(11, 4))
    ax_hist, ax_pairs = figure.subplots(1, 2)
    chosen, rejected = np.asarray(chosen_words, float), np.asarray(rejected_words, float)
    if len(chosen) != len(rejected):
        raise ValueError(f"caption_lengths: {len(chosen)} chosen vs {len(rejected)} rejected lengths; one per pair")
    if not len(chosen):
        _no_data(ax_hist, "caption length (words)")
        _no_data(ax_pairs, "length per pair")
        return figure
    bins = _bins(chosen, rejected)
    ax_hist.hist(chosen, bins=bins, alpha=0.6, color=CHOSEN, label=f"chosen (mean {chosen.mean():.1f})")
    ax_hist.hist(rejected, bins=bins, alpha=0.6, color=REJECTED, label=f"rejected (mean {rejected.mean():.1f})")
    ax_hist.set_title("caption length (words)")
    ax_hist.legend()
    ax_pairs.scatter(rejected, chosen, s=12, alpha=0.6, color=CHOSEN)
    low, high = bins[0], bins[-1]
    ax_pairs.plot([low, high], [low, high], color=THRESHOLD, linestyle=":", label="same length")
    longer = float((chosen > rejected).mean() * 100)
    ax_pairs.set_title(f"chosen longer in {longer:.0f}% of {len(chosen)} pairs")
    ax_pairs.set_xlabel("rejected (words)")
    ax_pairs.set_ylabel("chosen (words)")
    ax_pairs.legend()
    figure.tight_layout()
    return figure


def grouped_bars(panels: Sequence[tuple[str, dict[str, dict[str, float | None]]]]) -> Figure:
    """One panel per (title, {model: {label: value}}): for each label, one bar per model (None: no bar
    drawn, its slot kept and marked '–'). Models keep the order of the first panel's dict."""
    figure = Figure(figsize=(6 * max(1, len(panels)), 4))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(panels))))
    for ax, (title, values) in zip(axes, panels):
        models = list(values)
        labels = list(dict.fromkeys(label for model in models for label in values[model]))
        width = 0.8 / max(1, len(models))
        x = np.arange(len(labels))
        for i, (model, colour) in enumerate(zip(models, MODEL_COLOURS * 4)):
            heights = [values[model].get(label) for label in labels]
            bars = ax.bar(
                x + (i - (len(models) - 1) / 2) * width,
                [np.nan if h is None else h for h in heights],
                width=width,
                color=colour,
                label=model,
            )
            ax.bar_label(bars, labels=["–" if h is None else f"{h:.1f}" for h in heights], fontsize="x-small")
        ax.set_xticks(x, labels)
        ax.set_title(title)
        ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _error_bars(values: Sequence[float | None], intervals: Sequence[tuple[float, float] | None]):
    """(x, centre, half width) of the intervals at points that have a value, for `Axes.errorbar`. Centred on the
    interval, not the point: a percentile interval need not hold the (rounded) value, and a bar from the value
    would then need a negative length, which matplotlib refuses; the point itself is drawn by its line."""
    kept = [(x, i) for x, (v, i) in enumerate(zip(values, intervals)) if v is not None and i is not None]
    return [x for x, _ in kept], [(i[0] + i[1]) / 2 for _, i in kept], [(i[1] - i[0]) / 2 for _, i in kept]


def _grid_shape(panels: int) -> tuple[int, int]:
    """(rows, columns) for `panels` small panels: at most 2 rows, so a figure of many stays wide, not tall."""
    rows = 1 if panels <= 3 else 2
    return rows, -(-panels // rows)


def _grid(figure: Figure, panels: int) -> list:
    """`panels` axes in reading order on a `_grid_shape` grid; the spare cell of an odd count removed."""
    axes = list(np.atleast_1d(figure.subplots(*_grid_shape(panels))).ravel())
    for spare in axes[panels:]:
        figure.delaxes(spare)
    return axes[:panels]


def rounds_curve(
    metrics: Mapping[str, Sequence[float | None]],
    pairs: Sequence[int | None],
    scores: Sequence[Sequence[float]],
    intervals: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
) -> Figure:
    """Per round (1, 2, ...): one panel per headline metric in `metrics` (titled by its key, which says which
    direction is better; its values for the base, then round 1, 2, ...: one more than the rounds), with error bars
    from `intervals` (the same keys; None where a point has none), then the pairs each round kept and the
    distribution of its captions' CLIP scores (each round captions with the model the round before trained).
    Each metric has its own y-axis: their scales differ (CHAIR a few %, F1 near 90)."""
    intervals = intervals or {}
    panels = max(1, len(metrics)) + 2
    rows, cols = _grid_shape(panels)
    figure = Figure(figsize=(3.6 * cols, 3.2 * rows))
    *ax_metrics, ax_pairs, ax_scores = _grid(figure, panels)
    rounds = np.arange(1, len(pairs) + 1)
    for ax, (name, values) in zip(ax_metrics, metrics.items()):
        x = range(len(values))
        ax.plot(x, [np.nan if v is None else v for v in values], "o-", color=MODEL_COLOURS[1])
        bar_x, centres, half_widths = _error_bars(values, intervals.get(name) or [None] * len(values))
        if bar_x:
            ax.errorbar(bar_x, centres, yerr=half_widths, fmt="none", ecolor=MODEL_COLOURS[1], capsize=4)
        ax.set_xticks(x, ["base", *map(str, range(1, len(values)))])
        ax.set_xlabel("round")
        ax.set_title(name)
    if not metrics:
        _no_data(ax_metrics[0], "headline metrics per round")
    bars = ax_pairs.bar(rounds, [np.nan if p is None else p for p in pairs], color=CHOSEN)
    ax_pairs.bar_label(bars, labels=["–" if p is None else f"{p}" for p in pairs], fontsize="small")
    ax_pairs.margins(y=0.12)  # room above the tallest bar for its label
    ax_pairs.set_xticks(rounds)
    ax_pairs.set_xlabel("round")
    ax_pairs.set_title("pairs kept per round")
    kept = [(r, list(s)) for r, s in zip(rounds, scores) if len(s)]
    if kept:
        ax_scores.boxplot([s for _, s in kept], positions=[r for r, _ in kept], showfliers=False)
        ax_scores.set_xlabel("round")
        ax_scores.set_title("CLIP score of the captions per round")
    else:
        _no_data(ax_scores, "CLIP score of the captions per round")
    figure.tight_layout()
    return figure
