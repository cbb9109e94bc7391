"""evaluate: the paper's evaluations (Sec. 6) of a baseline and the models compared with it.

`run(cfg, output)` evaluates the configured models (`evaluation.evaluate_models`) and prints the
stage's summary line; with `task=(model, task)` one unit of the fan-out, with `merge=True` the
report from the fan-out's records (`fanout`): how the work is split is the caller's, not the config's.
The parts: `amber` (Table 2, exact to the official code), `zeroshot` (Table 3), `suite` (the LLaVA
benchmarks of Table 4), `infer` (resumable responses), `report`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from clipdpo.storage import Storage, join

if TYPE_CHECKING:  # torch loads only when a model is evaluated
    from clipdpo.evaluate.config import EvaluateConfig


def run(
    cfg: EvaluateConfig,
    output: str,
    *,
    storage: Storage | None = None,
    task: tuple[str, str] | None = None,
    merge: bool = False,
) -> dict:
    """Evaluate every model of `cfg` into `output` (responses, metrics.json, report.md/.html); the metrics.
    `task`: only this (model, task) of the fan-out, its record and no report; `merge`: the report from the
    fan-out's records."""
    from clipdpo.evaluate import fanout
    from clipdpo.evaluate.evaluation import evaluate_models

    if task is not None:  # one (model, task) of the fan-out: its record, no report
        model_name, task_name = task
        record = fanout.evaluate_task(cfg, task, output, storage or Storage())
        print(
            json.dumps(
                {
                    "stage": "evaluate",
                    "model": model_name,
                    "task": task_name,
                    "inferred": record["inferred"],
                    "cached": record["cached"],
                    "record": fanout.task_record_uri(output, model_name, task_name),
                }
            ),
            flush=True,
        )
        return record
    storage = storage or Storage()
    metrics = fanout.merge(cfg, output, storage) if merge else evaluate_models(cfg, output, storage)
    amber_scores = {
        name: result["amber"].get("amber_score") for name, result in metrics["results"].items() if "amber" in result
    }
    print(
        json.dumps(
            {
                "stage": "evaluate",
                "output": output,
                "complete": metrics["complete"],
                "report": join(output, "report.md"),
                "amber_score": amber_scores,
            },
            sort_keys=True,
        ),
        flush=True,
    )
    return metrics
