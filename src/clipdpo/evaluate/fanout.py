"""Evaluation as a fan-out: one call per (model, task), then a merge into the same report.

A task is one evaluation unit: `amber` (its generative and discriminative halves score together),
`zeroshot-<dataset>`, `suite-<benchmark>`. `evaluate_task` answers and scores one (model, task)
with the config narrowed to it, writing `<output>/tasks/<model>/<task>.json`; `merge` builds
metrics.json and the reports from every record, exactly as the sequential `evaluate_models`.

The baseline's records are cached under `result_cache` (e.g. s3://<bucket>/eval-cache), keyed by what
decides the result, each by content: the model (S3 ETags or file digests; a hub id by its name), the
task's benchmark files (its folders' sizes and ETags or sha256), the NLP resources AMBER scores with
(the spaCy model's files or installed version, the nltk data), the zero-shot text encoder's config
folder, the code that answers and scores (digest of its source), and every config field that decides
the result; so a retraining run evaluates its unchanged base once, ever, and a changed benchmark,
NLP model or scorer is evaluated again, never served from an old entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

from clipdpo import determinism
from clipdpo.config import key_dict
from clipdpo.evaluate import zeroshot
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.evaluate.evaluation import (
    EngineFactory,
    amber_section,
    answer_all,
    assemble_metrics,
    default_engine_factory,
    read_inputs,
    score_model,
    scorers,
    write_metrics,
    zero_shot_section,
)
from clipdpo.storage import Storage, is_remote, join

CACHE_VERSION = 2  # the key's layout; the scoring code itself is in the key by its source digest


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
        raise ValueError(f"model {model!r}: not one of the models {[s.name for s in cfg.models]}")
    if task not in task_names(cfg):
        raise ValueError(f"task {task!r}: not one of the tasks {task_names(cfg)}")
    narrowed = replace(cfg, models=specs)
    if task == "amber":
        return replace(narrowed, zero_shot=None, suite=[])
    if task.startswith("zeroshot-"):
        zero_shot = zero_shot_section(cfg)
        datasets = [d for d in zero_shot.datasets if f"zeroshot-{d.name}" == task]
        return replace(narrowed, amber=None, zero_shot=replace(zero_shot, datasets=datasets), suite=[])
    return replace(narrowed, amber=None, zero_shot=None, suite=[b for b in cfg.suite if f"suite-{b.label}" == task])


def task_record_uri(output: str, model: str, task: str) -> str:
    return join(output, "tasks", model, f"{task}.json")


# The code that answers and scores: this package, the engines and the image decoding.
_SCORING_CODE = (
    Path(__file__).parent,
    Path(__file__).parent.parent / "engines.py",
    Path(__file__).parent.parent / "images.py",
)


@lru_cache(maxsize=1)
def scoring_code_digest() -> str:
    """A hash of the source of the code that answers and scores: another scorer is another cache entry."""
    digest = hashlib.sha256()
    for root in _SCORING_CODE:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            digest.update(
                f"{file.relative_to(root.parent)}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode()
            )
    return digest.hexdigest()


def task_data(one: EvaluateConfig, task: str) -> list[str]:
    """The folders a task reads its items and images from (as evaluation.read_inputs does)."""
    if task == "amber":
        amber = amber_section(one)
        return [amber.root, amber.images or join(amber.root.rstrip("/").rsplit("/", 1)[0], "image")]
    if task.startswith("zeroshot-"):
        return [dataset.root for dataset in zero_shot_section(one).datasets]
    return [
        folder
        for benchmark in one.suite
        for folder in dict.fromkeys([benchmark.root, benchmark.images or benchmark.root])
    ]


def spacy_model_identity(storage: Storage, model: str) -> str:
    """A spaCy model by content: a folder's files, else the installed package's name and version."""
    if Path(model).is_dir() or is_remote(model):
        return "files:" + storage.content_digest(model)
    from importlib import metadata

    try:
        return f"package:{model}=={metadata.version(model)}"
    except metadata.PackageNotFoundError:
        return f"package:{model} (not installed)"


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def scoring_resources(storage: Storage, one: EvaluateConfig, task: str) -> dict:
    """What a task scores with besides the code: AMBER's NLP, the zero-shot text encoder's config folder."""
    if task == "amber":
        nlp = amber_section(one).nlp
        return {
            "spacy": _version("spacy"),
            "spacy_model": spacy_model_identity(storage, nlp.spacy_model),
            **(
                {
                    "nltk": _version("nltk"),
                    "nltk_data": storage.content_digest(nlp.nltk_data)
                    if nlp.nltk_data
                    else os.environ.get("NLTK_DATA", ""),
                }
                if nlp.backend == "official"
                else {}
            ),
        }
    if task.startswith("zeroshot-") and (config_dir := zero_shot_section(one).text_encoder.model_config_dir):
        return {"text_encoder_config": storage.content_digest(config_dir)}
    return {}


def cache_uri(storage: Storage, one: EvaluateConfig, task: str) -> str:
    """Where the result of `one` (a config narrowed to one model and task) is cached."""
    spec = one.models[0]
    config = key_dict(one)  # the fields marked NOT_IN_KEY (where and how it runs) out
    decided_by = {
        "version": CACHE_VERSION,
        "model": storage.content_digest(spec.path),
        "task": task,
        "engine": {k: v for k, v in asdict(spec).items() if k not in ("name", "path")},
        "config": config,
        "data": {folder: storage.content_digest(folder) for folder in task_data(one, task)},
        "scoring": scoring_resources(storage, one, task),
        "code": scoring_code_digest(),
    }
    key = hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:32]
    return join(one.result_cache, key, "result.json")


def _answer_and_score(
    one: EvaluateConfig, output: str, storage: Storage, engine_factory: EngineFactory, nlp, encoder
) -> dict:
    inputs = read_inputs(storage, one)
    nlp, encoder = scorers(one, inputs, nlp, encoder)
    name = one.models[0].name
    responses, inferred = answer_all(one, inputs.tasks, output, storage, engine_factory)
    classes = {
        dataset.name: zeroshot.class_embeddings(names, encoder, zero_shot_section(one))
        for dataset, _, names in inputs.zero_shot
    }
    resources = {
        "amber_nlp": getattr(nlp, "description", None),
        "zero_shot_text_encoder": getattr(encoder, "description", None),
        "cpu": determinism.record(),
    }
    return {
        "result": score_model(one, inputs, responses[name], nlp, encoder, classes),
        "inferred": inferred[name],
        "resources": {k: v for k, v in resources.items() if v is not None},
    }


def evaluate_task(
    cfg: EvaluateConfig,
    unit: tuple[str, str],
    output: str,
    storage: Storage | None = None,
    engine_factory: EngineFactory | None = None,
    nlp=None,
    encoder=None,
) -> dict:
    """One `unit` (model, task) of the fan-out: its record, written to `task_record_uri` (the baseline via the
    cache)."""
    model, task = unit
    storage = storage or Storage()
    one = restrict(cfg, model, task)
    engine_factory = engine_factory or (lambda spec: default_engine_factory(spec, one, storage))
    cached_at = cache_uri(storage, one, task) if one.result_cache and model == cfg.models[0].name else ""
    if cached_at and storage.exists(cached_at):
        record = {**json.loads(storage.read_bytes(cached_at)), "inferred": 0, "cached": cached_at}
    else:
        record = {
            "model": model,
            "task": task,
            **_answer_and_score(one, output, storage, engine_factory, nlp, encoder),
            "cached": "",
        }
        record = json.loads(json.dumps(record))  # the same JSON types whether computed or read from the cache
        if cached_at:
            storage.write_bytes(cached_at, json.dumps({**record, "cached": ""}, sort_keys=True).encode())
    storage.write_bytes(task_record_uri(output, model, task), json.dumps(record, indent=2, sort_keys=True).encode())
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
            raise FileNotFoundError(
                f"{uri}: no record for model {item['model']!r}, task {item['task']!r}; run that (model, task) first"
            )
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
