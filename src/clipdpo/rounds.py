"""Iterative rounds: generate -> score -> filter -> train again, each round from the model the round before made.

Round k captions the run's images with round k-1's model (round 1: the configured captioners), and trains from
round k-1's model, which is also its DPO reference (the train config's `model`). This module holds the layout
and the decisions; the round steps of clipdpo.steps (`round_*`) run them in the pipeline.

Layout under a run root: round 1 writes what a one-round run writes, where it writes it (images, candidates,
scores, pairs, model), so a one-round run and its caches are round 1 of a longer run, and a rerun with more
rounds reuses it. Rounds 2.. write the same artifacts under `<run_root>/round-<k>/`. Every round's evaluation
(the base model and that round's model) and its decision are under `<run_root>/round-<k>/`, round 1's too:
`<run_root>/evaluation` holds the run's final evaluation (every round, then the kept model under the trained
model's own name), which the gate and the report read as they do for one round.

A round that fails the promotion gate's rules (clipdpo.gate) against the round before (round 1: against the
base model) ends the rounds: the model kept is the last round that passed (round 1 when none did: nothing
better was trained, and the gate then judges it as it judges a one-round run).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from clipdpo.storage import Storage, join

if TYPE_CHECKING:
    from clipdpo.engines import ModelSpec
    from clipdpo.gate import Rule

ROUND_FOLDER = "round-{}"
DECISION = "decision.json"  # a round's verdict, under its folder
ROUNDS_RECORD = "rounds.json"  # under the run root: every round's verdict and the model kept
CONTINUE, STOP = "continue", "stop"  # a round check's verdict, which the pipeline's dsl.If reads


def check_round(index: int) -> int:
    if int(index) < 1:
        raise ValueError(f"round {index}: rounds count from 1")
    return int(index)


def round_folder(run_root: str, index: int) -> str:
    """`<run_root>/round-<k>`: where round k's evaluation and decision are (and its artifacts, from round 2)."""
    return join(run_root, ROUND_FOLDER.format(check_round(index)))


def round_root(run_root: str, index: int) -> str:
    """The root round k's stage artifacts are under: the run root for round 1 (a one-round run's layout)."""
    return run_root if check_round(index) == 1 else round_folder(run_root, index)


def round_name(index: int) -> str:
    """Round k's model as the evaluation names it."""
    return f"round{check_round(index)}"


def round_train_config(config: dict[str, Any], start_model: str, index: int) -> dict[str, Any]:
    """The run's train config (a JSON object) for round k >= 2: starting from `start_model`, round k-1's model,
    which is also DPO's reference (the frozen copy or the precomputed log-probs are of the train config's model)."""
    from clipdpo.config import from_dict
    from clipdpo.train.config import TrainConfig, check_rounds

    check_rounds(from_dict(TrainConfig, config, "train_config"), index)
    changed = {key: value for key, value in config.items() if key != "revision"}  # the base's hub revision
    changed["model"] = start_model
    from_dict(TrainConfig, changed, "train_config")
    return changed


def round_captioner(captioners: list[ModelSpec], base_model: str, path: str, name: str) -> ModelSpec:
    """The one captioner of a later round: the model at `path`, named `name`, with the engine settings of the
    captioner that was the model being trained (`base_model`), else of the first."""
    like = next((spec for spec in captioners if spec.path == base_model), captioners[0])
    return replace(like, name=name, path=path)


def reference_results(index: int, metrics: dict, previous_metrics: dict | None) -> tuple[str, dict]:
    """What round k is judged against: (name, results): round k-1's model, or for round 1 the base."""
    if index == 1 or previous_metrics is None:
        return metrics["baseline"], metrics["results"][metrics["baseline"]]
    name = round_name(index - 1)
    return name, previous_metrics["results"][name]


def judge(index: int, rules: list[Rule], metrics: dict | None, previous_metrics: dict | None) -> dict:
    """Round k's verdict with the gate's rules: {passed, checks, reference, continue, kept}. No evaluation
    (metrics None): nothing to judge, the rounds go on and the latest round is kept."""
    from dataclasses import asdict

    from clipdpo.gate import decide

    index = check_round(index)
    if metrics is None:
        return {"passed": None, "checks": [], "reference": None, "continue": True, "kept": index}
    reference, results = reference_results(index, metrics, previous_metrics)
    passed, checks = decide(rules, metrics["results"][round_name(index)], results)
    return {
        "passed": passed,
        "checks": [asdict(each) for each in checks],
        "reference": reference,
        "continue": passed,
        # the rounds before all passed (a failure stops them): the one before is the best; round 1 stays when it
        # is the one that failed, as a one-round run's model would
        "kept": index if passed or index == 1 else index - 1,
    }


def decision_record(index: int, verdict: dict, path: str, evaluation: str, before: dict | None) -> dict:
    """Round k's decision.json: its verdict (rounds.judge), its model (`path`) and evaluation, every round's so far
    (without their checks), and the model kept."""
    this = {"round": index, "name": round_name(index), "path": path, "evaluation": evaluation, **verdict}
    history = (before["rounds"] if before else []) + [{k: v for k, v in this.items() if k != "checks"}]
    kept = next(each for each in history if each["round"] == verdict["kept"])
    return {**this, "rounds": history, "kept": {k: kept[k] for k in ("round", "name", "path", "evaluation")}}


def final_models(models: list[dict], record: dict) -> list[dict]:
    """The run's evaluation's models once the rounds end: the baseline (the first of `models`, the run's evaluate
    models), each round's model, then the model kept under the trained model's name (the last of `models`)."""
    base, trained = models[0], {**models[-1], "path": record["kept"]["path"]}
    return [base] + [{**trained, "name": each["name"], "path": each["path"]} for each in record["rounds"]] + [trained]


def copy_records(storage: Storage, source: str, source_name: str, output: str, name: str, tasks: list[str]) -> None:
    """Model `source_name`'s task records in the evaluation at `source`, as model `name`'s in `output`."""
    from clipdpo.evaluate.fanout import task_record_uri

    for task in tasks:
        record = json.loads(storage.read_bytes(task_record_uri(source, source_name, task)))
        record["model"] = name
        storage.write_bytes(task_record_uri(output, name, task), json.dumps(record, indent=2, sort_keys=True).encode())


def summary_line(record: dict) -> str:
    """One line for a person: each round's verdict and the model kept."""
    parts = []
    for each in record["rounds"]:
        verdict = {True: "passed", False: "FAILED", None: "not judged"}[each["passed"]]
        against = f" vs {each['reference']}" if each["reference"] else ""
        parts.append(f"round {each['round']} {verdict}{against}")
    kept = record["kept"]
    stopped = record["rounds"][-1]["continue"] is False
    return (
        "; ".join(parts)
        + ("; rounds stopped there" if stopped else "")
        + f"; kept round {kept['round']} ({kept['path']})"
    )
