"""Evaluation as a fan-out: one call per (model, task), then a merge into the same report.

A task is one evaluation unit: `amber` (its generative and discriminative halves score together),
`zeroshot-<dataset>`, `suite-<benchmark>`. `evaluate_task` answers and scores one (model, task)
with the config narrowed to it, writing `<output>/tasks/<model>/<task>.json`; `merge` builds
metrics.json and the reports from every record, exactly as the sequential `evaluate_models`.

The baseline's records are cached under `result_cache` (e.g. s3://<bucket>/eval-cache), keyed by a
hash of the model's content (S3 ETags or file digests; a hub id by its name), the task and every
config field that decides the result, so a retraining run evaluates its unchanged base once, ever.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

from clipdpo import determinism
from clipdpo.config import to_dict
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.evaluate.evaluation import (EngineFactory, answer_all, assemble_metrics, default_engine_factory,
                                         read_inputs, score_model, scorers, write_metrics)
from clipdpo.evaluate import zeroshot
from clipdpo.storage import Storage, join

CACHE_VERSION = 2  # bump when scoring code changes what a cached result would hold (2: per-image counts)
# `engine` names the derived models' engine, which their specs (in the key) carry
NOT_IN_KEY = ("models", "only_model", "only_task", "result_cache", "model_cache", "batch_size", "chunk_size",
              "engine", "bootstrap_resamples", "bootstrap_seed")


def task_names(cfg: EvaluateConfig) -> list[str]:
    names = ["amber"] if cfg.amber is not None else []
    names += [f"zeroshot-{dataset.name}" for dataset in (cfg.zero_shot.datasets if cfg.zero_shot else [])]
    return names + [f"suite-{benchmark.label}" for benchmark in cfg.suite]


def plan(cfg: EvaluateConfig) -> list[dict[str, str]]:
    """Every (model, task) item of the fan-out, models first-to-last, tasks in config order."""
    return [{"model": spec.name, "task": task} for spec in cfg.models for task in task_names(cfg)]


def restrict(cfg: EvaluateConfig, model: str, task: str) -> EvaluateConfig:
    """`cfg` narrowed to one model and one task (an error naming what exists when either is unknown)."""
    specs = [spec for spec in cfg.models if spec.name == model]
    if not specs:
        raise ValueError(f"only_model {model!r}: not one of the models {[s.name for s in cfg.models]}")
    if task not in task_names(cfg):
        raise ValueError(f"only_task {task!r}: not one of the tasks {task_names(cfg)}")
    narrowed = replace(cfg, models=specs, only_model="", only_task="")
    if task == "amber":
        return replace(narrowed, zero_shot=None, suite=[])
    if task.startswith("zeroshot-"):
        datasets = [d for d in cfg.zero_shot.datasets if f"zeroshot-{d.name}" == task]
        return replace(narrowed, amber=None, zero_shot=replace(cfg.zero_shot, datasets=datasets), suite=[])
    return replace(narrowed, amber=None, zero_shot=None, suite=[b for b in cfg.suite if f"suite-{b.label}" == task])


def task_record_uri(output: str, model: str, task: str) -> str:
    return join(output, "tasks", model, f"{task}.json")


def cache_uri(storage: Storage, one: EvaluateConfig, task: str) -> str:
    """Where the result of `one` (a config narrowed to one model and task) is cached."""
    spec = one.models[0]
    config = {k: v for k, v in to_dict(one).items() if k not in NOT_IN_KEY}
    decided_by = {"version": CACHE_VERSION, "model": storage.content_digest(spec.path), "task": task,
                  "engine": {k: v for k, v in asdict(spec).items() if k not in ("name", "path")}, "config": config}
    key = hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:32]
    return join(one.result_cache, key, "result.json")


def _answer_and_score(one: EvaluateConfig, output: str, storage: Storage, engine_factory: EngineFactory,
                      nlp, encoder) -> dict:
    inputs = read_inputs(storage, one)
    nlp, encoder = scorers(one, inputs, nlp, encoder)
    name = one.models[0].name
    responses, inferred = answer_all(one, inputs.tasks, output, storage, engine_factory)
    classes = {dataset.name: zeroshot.class_embeddings(names, encoder, one.zero_shot)
               for dataset, _, names in inputs.zero_shot}
    resources = {"amber_nlp": getattr(nlp, "description", None),
                 "zero_shot_text_encoder": getattr(encoder, "description", None), "cpu": determinism.record()}
    return {"result": score_model(one, inputs, responses[name], nlp, encoder, classes), "inferred": inferred[name],
            "resources": {k: v for k, v in resources.items() if v is not None}}


def evaluate_task(cfg: EvaluateConfig, output: str, storage: Storage | None = None,
                  engine_factory: EngineFactory | None = None, nlp=None, encoder=None) -> dict:
    """One (cfg.only_model, cfg.only_task): its record, written to `task_record_uri` (the baseline via the cache)."""
    storage = storage or Storage()
    one = restrict(cfg, cfg.only_model, cfg.only_task)
    engine_factory = engine_factory or (lambda spec: default_engine_factory(spec, one, storage))
    cached_at = cache_uri(storage, one, cfg.only_task) if one.result_cache and cfg.only_model == cfg.models[0].name \
        else ""
    if cached_at and storage.exists(cached_at):
        record = {**json.loads(storage.read_bytes(cached_at)), "inferred": 0, "cached": cached_at}
    else:
        record = {"model": cfg.only_model, "task": cfg.only_task,
                  **_answer_and_score(one, output, storage, engine_factory, nlp, encoder), "cached": ""}
        record = json.loads(json.dumps(record))  # the same JSON types whether computed or read from the cache
        if cached_at:
            storage.write_bytes(cached_at, json.dumps({**record, "cached": ""}, sort_keys=True).encode())
    storage.write_bytes(task_record_uri(output, cfg.only_model, cfg.only_task),
                        json.dumps(record, indent=2, sort_keys=True).encode())
    return record


def merge(cfg: EvaluateConfig, output: str, storage: Storage | None = None) -> dict:
    """metrics.json, report.md and report.html from every (model, task) record under `output`."""
    storage = storage or Storage()
    results: dict[str, dict] = {spec.name: {} for spec in cfg.models}
    inferred = {spec.name: 0 for spec in cfg.models}
    resources: dict = {}
    for item in plan(cfg):
        uri = task_record_uri(output, item["model"], item["task"])
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri}: no record for model {item['model']!r}, task {item['task']!r}; "
                                    "run that (model, task) first")
        record = json.loads(storage.read_bytes(uri))
        for section, value in record["result"].items():  # amber: one value; zero_shot/suite: one key each
            if section == "amber":
                results[item["model"]]["amber"] = value
            else:
                results[item["model"]].setdefault(section, {}).update(value)
        inferred[item["model"]] += record["inferred"]
        resources.update(record["resources"])
    metrics = assemble_metrics(cfg, results, inferred, resources)
    return write_metrics(storage, output, metrics)
