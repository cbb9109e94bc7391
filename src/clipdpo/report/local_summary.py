"""The terminal summary at the end of a local pipeline run (kfp's local runner).

kfp's local runner gives each run a folder `<pipeline_root>/<pipeline>-<timestamp>/` with one folder per task
it executed, holding the task's `executor_output.json` (its Metrics output's numbers among them). A task
served from kfp's cache gets no folder in this run: its numbers come from the newest earlier run that ran it.
(kfp's local layout, as of kfp 2.17; a task it cannot find is shown without numbers.)

A run of several rounds (clipdpo.rounds) also gets a line per round: its steps, how many kfp's cache served, and
its wall time in this run (`round_lines`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

# Metrics keys shown as a step's rows (the first one present).
ROW_KEYS = ("rows", "steps")
# Task folders in pipeline order (kfp names them after the components); others follow, by name.
ORDER = (
    "plan-shards",
    "ingest",
    "generate-shard",
    "generate-finalize",
    "score-shard",
    "score-finalize",
    "filter-pairs",
    "train",
    "evaluate",
    "report",
)


@dataclass
class StepLine:
    task: str
    cached: bool
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> float | None:
        return next((self.metrics[k] for k in ROW_KEYS if k in self.metrics), None)


def task_metrics(task_dir: str) -> dict[str, float] | None:
    """The numbers a task's Metrics outputs logged; None when the task left no executor output."""
    path = os.path.join(task_dir, "executor_output.json")
    if not os.path.isfile(path):
        return None
    output = json.load(open(path))
    values: dict[str, float] = {}
    for artifacts in output.get("artifacts", {}).values():
        for artifact in artifacts.get("artifacts", []):
            if artifact.get("type", {}).get("schemaTitle") in (None, "system.Metrics"):
                values.update(
                    {
                        k: float(v)
                        for k, v in (artifact.get("metadata") or {}).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    }
                )
    return values


def run_dirs(pipeline_root: str, pipeline_name: str) -> list[str]:
    """This pipeline's local run folders, oldest first (their names end in a sortable timestamp)."""
    if not os.path.isdir(pipeline_root):
        return []
    names = sorted(n for n in os.listdir(pipeline_root) if n.startswith(pipeline_name + "-"))
    return [os.path.join(pipeline_root, n) for n in names if os.path.isdir(os.path.join(pipeline_root, n))]


def task_names(pipeline_root: str, pipeline_name: str) -> list[str]:
    """Every task any local run of the pipeline executed, as its folder relative to the run (a ParallelFor
    iteration's tasks sit under `for-loop-<n>-iteration-<i>/`), in pipeline order."""
    names = set()
    for run in run_dirs(pipeline_root, pipeline_name):
        for folder, _, files in os.walk(run):
            if "executor_output.json" in files:
                names.add(os.path.relpath(folder, run))

    def rank(name: str) -> tuple[int, str]:
        leaf = os.path.basename(name)
        known = [i for i, prefix in enumerate(ORDER) if leaf == prefix]
        return (known[0] if known else len(ORDER), name)

    return sorted(names, key=rank)


def display_name(task: str) -> str:
    """`for-loop-1-iteration-0/generate-shard` -> `generate-shard[0]`."""
    parent, leaf = os.path.split(task)
    return f"{leaf}[{parent.rsplit('-', 1)[1]}]" if "-iteration-" in parent else task


def collect(
    pipeline_root: str,
    pipeline_name: str,
    tasks: list[str],
    before: set[str],
    this_run: Collection[str] | None = None,
) -> list[StepLine]:
    """One line per task: its newest metrics, and whether kfp's cache served it this time. `before`: the
    run folders that existed before this run started (a run served wholly from cache may add none).
    `this_run`: the steps this run ran or served from cache (a task folder's last part); a task of an earlier
    run that is not among them (a dsl.If branch not taken this time) is left out. None: every task."""
    runs = run_dirs(pipeline_root, pipeline_name)
    lines = []
    for task in tasks:
        if this_run is not None and os.path.basename(task) not in this_run:
            continue
        measured = [(run, task_metrics(os.path.join(run, task))) for run in runs]
        found = [(run, values) for run, values in measured if values is not None]
        if not found:
            lines.append(StepLine(task, cached=False))
            continue
        run, values = found[-1]
        lines.append(StepLine(task, cached=run in before, metrics=values))
    return lines


def pairs_note(metrics: dict[str, float]) -> str:
    """What a step's pairs are made of, where it counted them (the filter: the paper's two kinds of pair)."""
    if "caption_pairs" not in metrics or "qa_pairs" not in metrics:
        return ""
    return f"  ({_number(metrics['caption_pairs'])} caption + {_number(metrics['qa_pairs'])} QA pairs)"


@dataclass
class RoundLine:
    """One round of a run of several (`round` None: the steps after the rounds, the run's evaluation, gate and
    report). `seconds`: its wall time in this run, None when unknown."""

    round: int | None
    steps: int
    cached: int
    seconds: float | None


def round_of(task: str, task_rounds: Mapping[str, int]) -> int | None:
    """A task folder's round by its task's name (the folder's last part); None: in no round."""
    return task_rounds.get(os.path.basename(task))


def round_lines(
    lines: list[StepLine], task_rounds: Mapping[str, int], ended: Mapping[str, float] | None
) -> list[RoundLine]:
    """Per round (then the steps after the rounds): its steps, how many kfp's cache served, and its wall time from
    `ended` ({step: seconds after the run began when it ended}, None: not known): from the end of the round before
    (the run's start for round 1) to the end of its last step. A round starts only once the round before has been
    checked, so the rounds' times add up to the run's. A round this run did not reach is left out."""
    groups: dict[int | None, list[StepLine]] = {}
    for line in lines:
        groups.setdefault(round_of(line.task, task_rounds), []).append(line)
    out, previous_end = [], 0.0
    for index in sorted(k for k in groups if k is not None) + ([None] if None in groups else []):
        members = groups[index]
        ends = [ended[os.path.basename(m.task)] for m in members if ended and os.path.basename(m.task) in ended]
        seconds = max(ends) - previous_end if ends else None
        previous_end = max(ends) if ends else previous_end
        out.append(RoundLine(index, len(members), sum(m.cached for m in members), seconds))
    return out


def _number(value: float | None, digits: str = ",.0f") -> str:
    return "–" if value is None else format(value, digits)


def _round_table(rounds: list[RoundLine]) -> list[str]:
    out = ["", f"{'round':<5}  {'steps':>5}  {'cached':>6}  {'wall s':>8}"]
    for line in rounds:
        name = "after" if line.round is None else str(line.round)
        out.append(f"{name:<5}  {line.steps:>5}  {line.cached:>6}  {_number(line.seconds, '.1f'):>8}")
    return out


def format_summary(
    lines: list[StepLine],
    headline: dict[str, dict[str, float]],
    report_path: str,
    task_rounds: Mapping[str, int] | None = None,
    ended: Mapping[str, float] | None = None,
) -> str:
    """Steps (cached or run, rows, seconds), then each headline metric per model, then the report's path. With
    `task_rounds` ({task name: round}, a run of several rounds) each step's round and a table of the rounds
    (round_lines, wall times from `ended`)."""
    width = max([len(display_name(line.task)) for line in lines] + [4])
    rounds = f"{'round':>5}  " if task_rounds else ""
    out = [f"{'step':<{width}}  {rounds}{'cached':<6}  {'rows':>9}  {'seconds':>8}"]
    for line in lines:
        index = round_of(line.task, task_rounds) if task_rounds else None
        rounds = f"{'–' if index is None else index:>5}  " if task_rounds else ""
        out.append(
            f"{display_name(line.task):<{width}}  {rounds}{'yes' if line.cached else 'no':<6}  "
            f"{_number(line.rows):>9}  {_number(line.metrics.get('step_seconds'), '.1f'):>8}{pairs_note(line.metrics)}"
        )
    if task_rounds:
        out += _round_table(round_lines(lines, task_rounds, ended))
    models = list(dict.fromkeys(m for values in headline.values() for m in values))
    if headline:
        metric_width = max(len(k) for k in headline)
        out += ["", f"{'metric':<{metric_width}}  " + "  ".join(f"{m:>10}" for m in models)]
        for metric, values in headline.items():
            out.append(
                f"{metric:<{metric_width}}  " + "  ".join(f"{_number(values.get(m), '.2f'):>10}" for m in models)
            )
    out += ["", f"report: {report_path}"]
    return "\n".join(out)
