"""Which figures a run's report holds: each one a name, a caption and a matplotlib Figure (clipdpo.plots)."""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure

from clipdpo import plots
from clipdpo.evaluate.report import AMBER_CATEGORIES
from clipdpo.filter.select import FUNNEL_ORDER
from clipdpo.report.gather import RunData, by_category

GENERATIVE = (("CHAIR ↓", "chair"), ("Cover ↑", "cover"), ("Hal ↓", "hal"), ("Cog ↓", "cog"))


@dataclass
class NamedFigure:
    name: str  # file stem: <name>.png beside the report
    section: str
    caption: str
    figure: Figure


def amber_panels(evaluation: dict) -> list[tuple[str, dict[str, dict[str, float | None]]]]:
    """AMBER's generative figures and discriminative F1 per category, model by model (baseline first)."""
    models = [m["name"] for m in evaluation.get("models", [])]
    amber = {m: evaluation["results"].get(m, {}).get("amber") for m in models}
    amber = {m: a for m, a in amber.items() if a}
    panels = []
    if any("generative" in a for a in amber.values()):
        generative = {
            m: {label: a.get("generative", {}).get(key) for label, key in GENERATIVE} for m, a in amber.items()
        }
        panels.append(("AMBER generative (%)", generative))
    if any("existence" in a or "attribute" in a for a in amber.values()):
        panels.append(
            (
                "AMBER discriminative F1 per category",
                {m: {label: (a.get(key) or {}).get("f1") for label, key in AMBER_CATEGORIES} for m, a in amber.items()},
            )
        )
    return panels


# A run of rounds' headline metrics: label (with the direction that is better, for the panel's title) and the
# metric's path in metrics.json's results; dot-joined, the same path keys its bootstrap interval in `effects`.
# Each zero-shot benchmark's top-1 comes after these AMBER ones and before POPE (see `round_headline`).
ROUND_HEADLINE = (
    ("CHAIR ↓", ("amber", "generative", "chair")),
    ("Hal ↓", ("amber", "generative", "hal")),
    ("Cover ↑", ("amber", "generative", "cover")),
    ("AMBER F1 ↑", ("amber", "discriminative", "f1")),
    ("AMBER score ↑", ("amber", "amber_score")),
)
POPE_HEADLINE = ("POPE F1 ↑", ("suite", "pope", "headline"))


def _at(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def round_headline(results: dict) -> list[tuple[str, tuple[str, ...]]]:
    """The headline metrics' (label, path): ROUND_HEADLINE, each zero-shot benchmark any model has, then POPE."""
    benchmarks = dict.fromkeys(name for r in results.values() for name in (_at(r, ("zero_shot",)) or {}))
    zero_shot = [(f"{name} top-1 ↑", ("zero_shot", name, "top1")) for name in benchmarks]
    return [*ROUND_HEADLINE, *zero_shot, POPE_HEADLINE]


def _round_models(run: RunData) -> list[str]:
    from clipdpo.rounds import round_name

    return [(run.evaluation or {}).get("baseline", "base")] + [round_name(r.index) for r in run.rounds]


def round_metrics(run: RunData) -> dict[str, list[float | None]]:
    """Each headline metric the evaluation has for the base and every round's model (round1, round2, ...)."""
    results = (run.evaluation or {}).get("results", {})
    models = _round_models(run)
    out = {}
    for label, path in round_headline(results):
        values = [_at(results.get(model), path) for model in models]
        if any(v is not None for v in values):
            out[label] = values
    return out


def round_interval(base: float | None, effect: dict | None) -> tuple[float, float] | None:
    """A round's 95% interval on the base's images: the base's value plus the paired bootstrap interval of the
    difference (round minus base), as metrics.json's effects hold it, within 0-100 (every headline metric is a
    percentage or a score out of 100: base + ci95 can pass 100 where the base is near it). None without a base
    value or an interval."""
    ci95 = (effect or {}).get("ci95")
    if base is None or not ci95:
        return None
    return max(0.0, base + ci95[0]), min(100.0, base + ci95[1])


def round_intervals(run: RunData) -> dict[str, list[tuple[float, float] | None]]:
    """The intervals of `round_metrics`' values, label by label; the base's is None (the differences are from it)."""
    effects = (run.evaluation or {}).get("effects") or {}
    results = (run.evaluation or {}).get("results", {})
    models = _round_models(run)
    metrics = round_metrics(run)
    out: dict[str, list[tuple[float, float] | None]] = {}
    for label, path in round_headline(results):
        if label not in metrics:
            continue
        key, base = ".".join(path), metrics[label][0]
        out[label] = [None]
        out[label] += [round_interval(base, effects.get(model, {}).get(key)) for model in models[1:]]
    return out


def run_figures(run: RunData) -> list[NamedFigure]:
    out = []
    if run.train_rows:
        out.append(
            NamedFigure(
                "training_curves",
                "Training",
                "DPO loss, reward accuracy and margin per step; the "
                "chosen and rejected captions' log-prob change against the reference model "
                "(chosen falling below zero is a warning sign).",
                plots.training_curves(run.train_rows, run.beta),
            )
        )
    if run.funnel:
        out.append(
            NamedFigure(
                "filter_funnel",
                "Data",
                "Rows entering the filter, removed by each rule (in the order they run) and kept.",
                plots.filter_funnel({k: v for k, v in run.funnel.items() if k in FUNNEL_ORDER}, FUNNEL_ORDER),
            )
        )
    p = run.pairs
    if p.chosen_score:
        margins = {"widest per image (all captions)": run.widest_margins, "kept pairs": p.margin}
        out.append(
            NamedFigure(
                "clip_scores",
                "Data",
                "CLIP scores of chosen and rejected captions, the score "
                "margin against the filter's threshold, and per image category.",
                plots.clip_scores(p.chosen_score, p.rejected_score, margins, run.margin_threshold, by_category(p)),
            )
        )
        out.append(
            NamedFigure(
                "caption_lengths",
                "Data",
                "Caption length, chosen vs rejected: if chosen "
                "captions are mostly the longer ones, DPO learns length, not content.",
                plots.caption_lengths(p.chosen_words, p.rejected_words),
            )
        )
    if len(run.rounds) > 1:
        out.append(rounds_figure(run))
    panels = amber_panels(run.evaluation) if run.evaluation else []
    if panels:
        out.append(
            NamedFigure(
                "amber",
                "Evaluation",
                "AMBER per model: generative hallucination figures and discriminative F1 per category.",
                plots.grouped_bars(panels),
            )
        )
    return out


def rounds_figure(run: RunData) -> NamedFigure:
    """A run of several rounds: each headline metric per round with its interval, pairs kept, caption scores."""
    return NamedFigure(
        "rounds",
        "Rounds",
        "A run of several rounds, each captioning with and training from the model the round before "
        "trained: each headline metric (base, then each round's model; bars: the round's 95% paired "
        "bootstrap interval on the base's images, where the evaluation has one), pairs kept, captions' CLIP "
        "scores.",
        plots.rounds_curve(
            round_metrics(run),
            [r.pairs for r in run.rounds],
            [r.caption_scores for r in run.rounds],
            round_intervals(run),
        ),
    )
