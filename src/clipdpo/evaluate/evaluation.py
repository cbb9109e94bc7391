"""The evaluate stage: every configured evaluation for every model, then metrics.json and the report.

Order of work: inputs are read and checked first (question files, annotations, images exist),
so bad input fails before any model is loaded; then per model its responses (resumable chunks,
see infer.py); then scoring, which needs no model. Outputs under `output`:
  responses/<model>/<task>-<key>/part-*.jsonl, metrics.json, report.md, report.html
metrics.json and the reports are written last and atomically; `complete` is false whenever a
result was scored on part of its items (AMBER's allow_partial), and the report says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from typing import Callable

from clipdpo.evaluate import amber, report, suite, zeroshot
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.evaluate.data import EvalInputError, Item, check_images_exist, image_uri, read_text
from clipdpo.evaluate.infer import YES_NO, Responder, Task
from clipdpo.generate.engines import Engine, ModelSpec, load_engine
from clipdpo.storage import Storage, join

log = logging.getLogger("clipdpo.evaluate")

SHORT_ANSWER_TOKENS = 16


def amber_tasks(storage: Storage, cfg: EvaluateConfig) -> tuple[amber.AmberData, list[Task]]:
    a = cfg.amber
    data = amber.load(a.root, storage)
    query_uri = join(a.root, a.query_file)
    queries = amber.load_queries(read_text(storage, query_uri, "AMBER query file"), query_uri, data)
    images = a.images or join(a.root.rstrip("/").rsplit("/", 1)[0], "image")
    wanted = amber.wanted_ids(data, a.evaluation_type)
    generative, discriminative = [], []
    for query in queries:
        if query["id"] not in wanted:
            continue
        item = Item(id=str(query["id"]), image=image_uri(images, query["image"]), prompt=query["query"])
        (generative if amber.is_generative(data, query["id"]) else discriminative).append(item)
    asked = {int(item.id) for item in generative + discriminative}
    if not a.allow_partial and wanted - asked:
        missing = sorted(wanted - asked)
        raise EvalInputError(f"{query_uri}: no query for {len(missing)} id(s) of evaluation type "
                             f"{a.evaluation_type!r} (e.g. {missing[:5]}); use query_all.json or allow_partial")
    tasks = []
    if generative:
        tasks.append(Task("amber-generative", generative, max_new_tokens=cfg.max_new_tokens))
    if discriminative:
        tasks.append(Task("amber-discriminative", discriminative, max_new_tokens=SHORT_ANSWER_TOKENS,
                          options=tuple(YES_NO) if a.discriminative_mode == "logits" else ()))
    return data, tasks


def default_engine_factory(spec: ModelSpec, cfg: EvaluateConfig, storage: Storage) -> Callable[[], Engine]:
    def make() -> Engine:
        from clipdpo.storage import local_model_dir

        local = replace(spec, path=local_model_dir(storage, spec.path, cfg.model_cache))
        return load_engine(local, vision=True, batch_size=cfg.batch_size)

    return make


def run(cfg: EvaluateConfig, output: str, storage: Storage | None = None,
        engine_factory: Callable[[ModelSpec], Callable[[], Engine]] | None = None, nlp=None, encoder=None) -> dict:
    """Evaluate every model; returns (and writes) the metrics. `nlp`/`encoder` replace the configured ones."""
    storage = storage or Storage()
    engine_factory = engine_factory or (lambda spec: default_engine_factory(spec, cfg, storage))

    # 1. inputs, checked before any model loads
    tasks: list[Task] = []
    amber_data = None
    if cfg.amber is not None:
        amber_data, amber_task_list = amber_tasks(storage, cfg)
        tasks += amber_task_list
    zero_shot_sets = []
    if cfg.zero_shot is not None:
        for dataset in cfg.zero_shot.datasets:
            items, class_names = zeroshot.load_dataset(storage, dataset, cfg.zero_shot.prompt)
            zero_shot_sets.append((dataset, items, class_names))
            tasks.append(Task(f"zeroshot-{dataset.name}", items, max_new_tokens=cfg.zero_shot.max_new_tokens))
    benchmarks = []
    for benchmark in cfg.suite:
        items = suite.load_items(storage, benchmark)
        benchmarks.append((benchmark, items))
        tasks.append(Task(f"suite-{benchmark.label}", items, max_new_tokens=SHORT_ANSWER_TOKENS))
    check_images_exist(storage, {task.name: task.items for task in tasks})
    if amber_data is not None and cfg.amber.evaluation_type in ("a", "g") and nlp is None:
        n = cfg.amber.nlp
        from clipdpo.evaluate.nlp import load_nlp

        nlp = load_nlp(n.backend, n.spacy_model, n.nltk_data)  # fail early, before hours of inference
    if zero_shot_sets and encoder is None:
        encoder = zeroshot.TextEncoder(cfg.zero_shot.text_encoder)

    # 2. responses, model by model (one model in memory at a time)
    responses: dict[str, dict[str, dict[str, str]]] = {}
    inferred: dict[str, int] = {}
    for spec in cfg.models:
        responder = Responder(spec, output, storage, engine_factory(spec), chunk_size=cfg.chunk_size)
        responses[spec.name] = {task.name: responder.answer(task) for task in tasks}
        inferred[spec.name] = responder.inferred
        del responder  # frees the engine before the next model loads

    # 3. scores
    classes = {dataset.name: zeroshot.class_embeddings(names, encoder, cfg.zero_shot)
               for dataset, _, names in zero_shot_sets}
    results: dict[str, dict] = {}
    for spec in cfg.models:
        got = responses[spec.name]
        result: dict = {}
        if amber_data is not None:
            answers = {int(i): r for name in ("amber-generative", "amber-discriminative") for i, r in got.get(name, {}).items()}
            result["amber"] = amber.evaluate(amber_data, answers, nlp, evaluation_type=cfg.amber.evaluation_type,
                                             threshold=cfg.amber.similarity_threshold,
                                             allow_partial=cfg.amber.allow_partial, examples=cfg.amber.examples)
            result["amber"].pop("counters")
        if zero_shot_sets:
            result["zero_shot"] = {dataset.name: zeroshot.evaluate_dataset(items, names, classes[dataset.name],
                                                                           got[f"zeroshot-{dataset.name}"], encoder)
                                   for dataset, items, names in zero_shot_sets}
        if benchmarks:
            result["suite"] = {b.label: {"kind": b.kind, **suite.score(b.kind, items, got[f"suite-{b.label}"])}
                               for b, items in benchmarks}
        results[spec.name] = result
    complete = all(r.get("amber", {}).get("complete", True) for r in results.values())
    metrics = {
        "complete": complete,
        "models": [asdict(spec) for spec in cfg.models],
        "baseline": cfg.models[0].name,
        "results": results,
        "resources": {"amber_nlp": getattr(nlp, "description", None),
                      "amber_discriminative_mode": cfg.amber.discriminative_mode if cfg.amber else None,
                      "zero_shot_text_encoder": getattr(encoder, "description", None)},
        "inferred_items": inferred,
    }
    storage.write_bytes(join(output, "report.md"), report.markdown(metrics).encode())
    storage.write_bytes(join(output, "report.html"), report.html(metrics).encode())
    storage.write_bytes(join(output, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True).encode())
    return metrics
