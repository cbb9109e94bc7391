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


ROUND_HEADLINE = (("AMBER score", ("amber", "amber_score")), ("CHAIR", ("amber", "generative", "chair")))


def round_metrics(run: RunData) -> dict[str, list[float | None]]:
    """Each headline metric the evaluation has for the base and every round's model (round1, round2, ...)."""
    from clipdpo.rounds import round_name

    evaluation = run.evaluation or {}
    results = evaluation.get("results", {})
    names = [evaluation.get("baseline", "base")] + [round_name(r.index) for r in run.rounds]
    out = {}
    for label, path in ROUND_HEADLINE:
        values = []
        for name in names:
            value = results.get(name)
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        if any(v is not None for v in values):
            out[label] = values
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
        out.append(
            NamedFigure(
                "rounds",
                "Rounds",
                "A run of several rounds, each captioning with and training from the model the round before "
                "trained: headline metrics (base, then each round's model), pairs kept, captions' CLIP scores.",
                plots.rounds_curve(
                    round_metrics(run), [r.pairs for r in run.rounds], [r.caption_scores for r in run.rounds]
                ),
            )
        )
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
