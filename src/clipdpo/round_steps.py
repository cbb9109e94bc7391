"""The pipeline steps of iterative rounds (clipdpo.rounds): what the round components in pipelines/ call.

A round step gets the run root and its round's index (a constant of the compiled pipeline) and finds round
k-1's model where round k-1 wrote it: inside a kfp ParallelFor the local runner binds another task's output to
the loop item, so the fan-out steps read nothing but the pipeline's parameters, their index and their item (the
versioned references they are also given order them and key kfp's cache on a cluster). Round 1's stages are
the one-round pipeline's own steps (clipdpo.steps); from round 2 on, `round_start` names the round's root and
its train config, and the pipeline's ordinary score-finalize, filter, training-pairs and train steps run on it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from typing import Any

from clipdpo import config as config_lib
from clipdpo import outputref, rounds
from clipdpo.config import ConfigError
from clipdpo.stage import ShardSpec, setup_logging
from clipdpo.steps import (
    artifact_uri,
    config_object,
    evaluate_item,
    evaluate_settings,
    merge_evaluation,
    planned_items,
    run_sharded,
    score_step,
    trained_model_path,
    typed_config,
)
from clipdpo.storage import NotFound, Storage, join

ROUND_RECORD = outputref.ROUND_RECORD  # under a later round's root: what it started from (versions that root)


def previous_model(run_root: str, index: int) -> str:
    """Round k-1's train artifact (round k >= 2 starts from it)."""
    if rounds.check_round(index) < 2:
        raise ValueError("round 1 starts from the configured model, not from a round before it")
    return artifact_uri(rounds.round_root(run_root, index - 1), "train")


def round_train_config(train_config_json: str, start_model: str) -> dict[str, Any]:
    """The run's train config starting from (and, as DPO's reference, held to) `start_model`; a LoRA round needs
    the merged model the round before saved (save_merged), as an adapter alone is no model to start from."""
    from clipdpo.train.config import TrainConfig

    cfg = typed_config(TrainConfig, train_config_json, "train_config")
    if cfg.finetune == "lora" and not cfg.save_merged:
        raise ConfigError("train_config.save_merged: rounds after the first start from the merged model; set it true")
    config = config_object(train_config_json, "train_config")
    config.pop("revision", None)  # a hub revision of the base model; the round's model is a folder
    config["model"] = start_model
    typed_config(TrainConfig, json.dumps(config), "train_config")
    return config


def round_start_step(run_root: str, index: int, model_uri: str, train_config_json: str) -> tuple[str, str]:
    """Round k >= 2: its root and its train config (from round k-1's model, `model_uri` its versioned train
    output), recorded in `<root>/round.json`, which versions the root for kfp's local cache check."""
    previous = outputref.plain(model_uri) or previous_model(run_root, index)
    config = round_train_config(train_config_json, trained_model_path(previous))
    root = rounds.round_root(run_root, index)
    record = {"round": index, "starts_from": outputref.ref(Storage(), previous), "train_config": config}
    Storage().write_bytes(join(root, ROUND_RECORD), json.dumps(record, indent=2, sort_keys=True).encode())
    return root, json.dumps(config, sort_keys=True)


def round_generate_step(
    run_root: str,
    index: int,
    config_json: str,
    train_config_json: str,
    shard_index: int = 0,
    shard_count: int = 1,
    finalize: bool = False,
) -> str:
    """One shard of round k's generate fan-out (`finalize`: its manifest): the run's images captioned by round
    k-1's model alone, into the round's candidates. The model's version is part of the artifact's fingerprint,
    so a retrained round k-1 makes round k caption again."""
    from clipdpo import generate
    from clipdpo.generate.config import GenerateConfig
    from clipdpo.train.config import TrainConfig

    cfg = typed_config(GenerateConfig, config_json, "generate_config")
    base = typed_config(TrainConfig, train_config_json, "train_config").model
    previous = previous_model(run_root, index)
    version = outputref.version(Storage(), previous)
    if not version:
        raise FileNotFoundError(f"round {index}: round {index - 1}'s model {previous} is not complete")
    captioner = rounds.round_captioner(cfg.captioners, base, trained_model_path(previous), rounds.round_name(index - 1))
    cfg = replace(cfg, captioners=[captioner])
    run = functools.partial(generate.run, input_fingerprints=[version])
    images = artifact_uri(run_root, "ingest")
    root = rounds.round_root(run_root, index)
    return run_sharded("generate", run, cfg, root, ShardSpec(int(shard_index), int(shard_count)), finalize, images)


def round_score_step(run_root: str, index: int, config_json: str, shard_index: int = 0, shard_count: int = 1) -> str:
    """One shard of round k's score fan-out, on the round's candidates."""
    return score_step(rounds.round_root(run_root, index), config_json, shard_index, shard_count)


# -- a round's evaluation: the base and the round's model, under <run_root>/round-<k>/evaluation ---------------------


def round_evaluation_uri(run_root: str, index: int) -> str:
    return join(rounds.round_folder(run_root, index), "evaluation")


def round_evaluate_settings(run_root: str, index: int, train_config_json: str, config_json: str) -> dict | None:
    """The evaluate config of round k (None: no evaluation): the baseline (the first model) and the trained model
    (the last; its engine settings) pointed at round k's model and named round<k>."""
    model = artifact_uri(rounds.round_root(run_root, index), "train")
    config = evaluate_settings(run_root, model, train_config_json, config_json)
    if config is None:
        return None
    trained = {**config["models"][-1], "name": rounds.round_name(index), "path": trained_model_path(model)}
    config["models"] = [config["models"][0], trained]
    return config


def round_evaluation_plan(run_root: str, index: int, model_uri: str, train_config_json: str, config_json: str):
    """Round k's evaluation fan-out items (steps.evaluation_plan for the round's models)."""
    return planned_items(round_evaluate_settings(run_root, index, train_config_json, config_json), model_uri)


def round_evaluate_task_step(run_root: str, index: int, train_config_json: str, config_json: str, item: str) -> str:
    config = round_evaluate_settings(run_root, index, train_config_json, config_json) or {}
    return evaluate_item(config, round_evaluation_uri(run_root, index), item)


def round_evaluate_merge_step(
    run_root: str, index: int, model_uri: str, train_config_json: str, config_json: str
) -> str:
    config = round_evaluate_settings(run_root, index, train_config_json, config_json)
    return merge_evaluation(config, round_evaluation_uri(run_root, index), model_uri)


# -- the check after each round, and the run's evaluation once the rounds end -------------------------------------


def _metrics(storage: Storage, evaluation: str) -> dict | None:
    if not evaluation:
        return None
    return json.loads(storage.read_bytes(join(outputref.plain(evaluation), "metrics.json")))


def _read_json(storage: Storage, uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(outputref.plain(uri))) if uri else None
    except NotFound:
        return None


def round_check_step(
    run_root: str, index: int, evaluation_uri: str, previous_decision: str, gate_config_json: str
) -> tuple[str, str]:
    """Judge round k against round k-1 (round 1: the base) with the gate's rules; write its decision (with every
    round's so far and the model kept) to `<run_root>/round-<k>/decision.json`. (verdict, decision versioned):
    rounds.CONTINUE or rounds.STOP."""
    from clipdpo.gate import GateConfig

    storage = Storage()
    rules = typed_config(GateConfig, gate_config_json, "gate_config").rules
    before = _read_json(storage, previous_decision)
    if index > 1 and before is None:
        raise FileNotFoundError(f"round {index}: round {index - 1}'s decision {previous_decision!r} is missing")
    verdict = rounds.judge(
        index, rules, _metrics(storage, evaluation_uri), _metrics(storage, before["evaluation"]) if before else None
    )
    model = artifact_uri(rounds.round_root(run_root, index), "train")
    this = {
        "round": index,
        "name": rounds.round_name(index),
        "path": trained_model_path(model),
        "evaluation": outputref.plain(evaluation_uri),
        **verdict,
    }
    history = (before["rounds"] if before else []) + [{k: v for k, v in this.items() if k != "checks"}]
    kept = next(each for each in history if each["round"] == verdict["kept"])
    record = {**this, "rounds": history, "kept": {k: kept[k] for k in ("round", "name", "path", "evaluation")}}
    uri = join(rounds.round_folder(run_root, index), rounds.DECISION)
    storage.write_bytes(uri, json.dumps(record, indent=2, sort_keys=True).encode())
    print(json.dumps({"stage": "round-check", "round": index, "summary": rounds.summary_line(record)}), flush=True)
    return rounds.CONTINUE if verdict["continue"] else rounds.STOP, outputref.ref(storage, uri)


def _copy_records(storage: Storage, source: str, source_name: str, output: str, name: str, tasks: list[str]) -> None:
    """Model `source_name`'s task records in the evaluation at `source`, as model `name`'s in `output`."""
    from clipdpo.evaluate.fanout import task_record_uri

    for task in tasks:
        record = json.loads(storage.read_bytes(task_record_uri(source, source_name, task)))
        record["model"] = name
        storage.write_bytes(task_record_uri(output, name, task), json.dumps(record, indent=2, sort_keys=True).encode())


def rounds_evaluation_step(run_root: str, decision_uri: str, train_config_json: str, config_json: str) -> str:
    """The run's evaluation once the rounds end, from the rounds' own (nothing is answered again): the base, each
    round's model (round1, round2, ...), then the model kept under the trained model's name (the gate's candidate
    and the report's, as in a one-round run). Writes `<run_root>/rounds.json` (every round's verdict, the model
    kept); returns `<run_root>/evaluation` versioned ("" when no evaluation is configured)."""
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.evaluate.fanout import task_names

    setup_logging()
    storage = Storage()
    record = _read_json(storage, decision_uri)
    if record is None:
        raise FileNotFoundError(f"the last round's decision {decision_uri!r} is missing")
    storage.write_bytes(join(run_root, rounds.ROUNDS_RECORD), json.dumps(record, indent=2, sort_keys=True).encode())
    kept = record["kept"]
    config = evaluate_settings(
        run_root, artifact_uri(rounds.round_root(run_root, kept["round"]), "train"), train_config_json, config_json
    )
    if config is None:
        return ""
    base, trained = config["models"][0], {**config["models"][-1], "path": kept["path"]}
    models = [base] + [{**trained, "name": each["name"], "path": each["path"]} for each in record["rounds"]]
    config["models"] = models + [trained]
    tasks = task_names(config_lib.from_dict(EvaluateConfig, config, "evaluate_config"))
    output = artifact_uri(run_root, "evaluate")
    _copy_records(storage, kept["evaluation"], base["name"], output, base["name"], tasks)
    for each in record["rounds"]:
        _copy_records(storage, each["evaluation"], each["name"], output, each["name"], tasks)
    _copy_records(storage, kept["evaluation"], kept["name"], output, trained["name"], tasks)
    model = artifact_uri(rounds.round_root(run_root, kept["round"]), "train")
    return merge_evaluation(config, output, model)
