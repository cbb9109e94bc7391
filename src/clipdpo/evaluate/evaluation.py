"""Evaluating models: every configured evaluation for every model, then metrics.json and the report.

Order of work: inputs are read and checked first (question files, annotations, images exist),
so bad input fails before any model is loaded; then per model its responses (resumable chunks,
see infer.py); then scoring, which needs no model. Outputs under `output`:
  responses/<model>/<task>-<key>/part-*.jsonl, metrics.json, report.md, report.html
metrics.json and the reports are written last and atomically; `complete` is false whenever a
result was scored on part of its items (AMBER's allow_partial), and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from clipdpo import determinism
from clipdpo.config import key_dict
from clipdpo.engines import Engine, ModelSpec, load_engine
from clipdpo.evaluate import amber, bootstrap, report, zeroshot
from clipdpo.evaluate.config import AmberConfig, Benchmark, EvaluateConfig, ZeroShotConfig, ZeroShotDataset
from clipdpo.evaluate.data import EvalInputError, Item, check_images_exist, image_uri, read_text
from clipdpo.evaluate.infer import YES_NO, Responder, Task
from clipdpo.evaluate.suite.questions import load_items
from clipdpo.evaluate.suite.scoring import pope_measure, pope_per_image
from clipdpo.evaluate.suite.scoring import score as score_benchmark
from clipdpo.storage import Storage, join

log = logging.getLogger("clipdpo.evaluate")
SHORT_ANSWER_TOKENS = 16
PER_IMAGE = "per_image"  # a result's per-image counts by benchmark ("amber", "zero_shot.<name>", "suite.<label>")
# each benchmark's metrics from its summed per-image counts (names: paths under the benchmark's results)
MEASURES: dict[str, bootstrap.Measure] = {"amber": amber.headline, "zero_shot": zeroshot.measure, "pope": pope_measure}
AMBER_TASKS = ("amber-generative", "amber-discriminative")

EngineFactory = Callable[[ModelSpec], Callable[[], Engine]]
Responses = dict[str, dict[str, str | list[str]]]  # task name -> item id -> reply (or its samples)


@dataclass
class Inputs:
    """Everything read from the benchmarks before any model loads."""

    tasks: list[Task] = field(default_factory=list)
    amber: amber.AmberData | None = None
    zero_shot: list[tuple[ZeroShotDataset, list[Item], list[zeroshot.ZeroShotClass]]] = field(default_factory=list)
    suite: list[tuple[Benchmark, list[Item]]] = field(default_factory=list)


def amber_section(cfg: EvaluateConfig) -> AmberConfig:
    """The AMBER settings, where the inputs hold AMBER items (read_inputs reads them only when configured)."""
    if cfg.amber is None:
        raise ValueError("evaluate: AMBER items without an `amber` section in the config")
    return cfg.amber


def zero_shot_section(cfg: EvaluateConfig) -> ZeroShotConfig:
    """The zero-shot settings, where the inputs hold zero-shot datasets (read only when configured)."""
    if cfg.zero_shot is None:
        raise ValueError("evaluate: zero-shot datasets without a `zero_shot` section in the config")
    return cfg.zero_shot


def _one_reply_each(replies: dict[str, str | list[str]], task: str) -> dict[str, str]:
    """A greedy task's replies: one text per item (only a sampling decoding, AMBER's alone, gives lists)."""
    texts = {item_id: reply for item_id, reply in replies.items() if isinstance(reply, str)}
    if len(texts) != len(replies):
        raise ValueError(f"evaluate: task {task}: sampled replies where one text per item was expected")
    return texts


def amber_tasks(storage: Storage, cfg: EvaluateConfig) -> tuple[amber.AmberData, list[Task]]:
    a = amber_section(cfg)
    data = amber.load(a.root, storage)
    query_uri = join(a.root, a.query_file)
    queries = amber.load_queries(read_text(storage, query_uri, "AMBER query file"), query_uri, data)
    images = a.images or join(a.root.rstrip("/").rsplit("/", 1)[0], "image")
    wanted = amber.wanted_ids(data, a.evaluation_type)
    generative: list[Item] = []
    discriminative: list[Item] = []
    for query in queries:
        if query["id"] not in wanted:
            continue
        item = Item(id=str(query["id"]), image=image_uri(images, query["image"]), prompt=query["query"])
        (generative if amber.is_generative(data, query["id"]) else discriminative).append(item)
    asked = {int(item.id) for item in generative + discriminative}
    if not a.allow_partial and wanted - asked:
        missing = sorted(wanted - asked)
        raise EvalInputError(
            f"{query_uri}: no query for {len(missing)} id(s) of evaluation type "
            f"{a.evaluation_type!r} (e.g. {missing[:5]}); use query_all.json or allow_partial"
        )
    tasks: list[Task] = []
    if generative:
        tasks.append(Task(AMBER_TASKS[0], generative, max_new_tokens=cfg.max_new_tokens, decoding=a.decoding))
    if discriminative:
        tasks.append(
            Task(
                AMBER_TASKS[1],
                discriminative,
                max_new_tokens=SHORT_ANSWER_TOKENS,
                options=tuple(YES_NO) if a.discriminative_mode == "logits" else (),
            )
        )
    return data, tasks


def read_inputs(storage: Storage, cfg: EvaluateConfig) -> Inputs:
    """Every benchmark's items, checked (images included) before any model is loaded."""
    inputs = Inputs()
    if cfg.amber is not None:
        inputs.amber, inputs.tasks = amber_tasks(storage, cfg)
    if cfg.zero_shot is not None:
        for dataset in cfg.zero_shot.datasets:
            items, class_names = zeroshot.load_dataset(storage, dataset, cfg.zero_shot.prompt)
            inputs.zero_shot.append((dataset, items, class_names))
            inputs.tasks.append(Task(f"zeroshot-{dataset.name}", items, max_new_tokens=cfg.zero_shot.max_new_tokens))
    for benchmark in cfg.suite:
        items = load_items(storage, benchmark)
        inputs.suite.append((benchmark, items))
        inputs.tasks.append(Task(f"suite-{benchmark.label}", items, max_new_tokens=SHORT_ANSWER_TOKENS))
    check_images_exist(storage, {task.name: task.items for task in inputs.tasks})
    return inputs


def default_engine_factory(spec: ModelSpec, cfg: EvaluateConfig, storage: Storage) -> Callable[[], Engine]:
    def make() -> Engine:
        from clipdpo.storage import local_model_dir

        local = replace(spec, path=local_model_dir(storage, spec.path, cfg.model_cache))
        return load_engine(local, vision=True, batch_size=cfg.batch_size)

    return make


def answer_all(
    cfg: EvaluateConfig, tasks: list[Task], output: str, storage: Storage, engine_factory: EngineFactory
) -> tuple[dict[str, Responses], dict[str, int]]:
    """Every model's replies to every task, model by model (one model in memory at a time)."""
    responses: dict[str, Responses] = {}
    inferred: dict[str, int] = {}
    for spec in cfg.models:
        responder = Responder(spec, output, storage, engine_factory(spec), chunk_size=cfg.chunk_size)
        responses[spec.name] = {task.name: responder.answer(task) for task in tasks}
        inferred[spec.name] = responder.inferred
        del responder  # frees the engine before the next model loads
    return responses, inferred


def score_model(cfg: EvaluateConfig, inputs: Inputs, got: Responses, nlp, encoder, classes: dict) -> dict:
    """One model's results from its replies: AMBER, zero-shot and suite, as configured; under PER_IMAGE each
    benchmark's counts per image (for the bootstrap intervals; assemble_metrics moves them out of the results)."""
    result: dict = {}
    per_image: dict[str, dict] = {}
    if inputs.amber is not None:
        a = amber_section(cfg)
        answers = {int(i): r for name in AMBER_TASKS for i, r in got.get(name, {}).items()}
        result["amber"] = amber.evaluate(
            inputs.amber,
            answers,
            nlp,
            evaluation_type=a.evaluation_type,
            threshold=a.similarity_threshold,
            options=amber.EvaluateOptions(allow_partial=a.allow_partial, examples=a.examples, per_item=True),
        )
        result["amber"].pop("counters")
        images = {int(item.id): item.image for task in inputs.tasks if task.name in AMBER_TASKS for item in task.items}
        for example in result["amber"].get("examples", []):  # the run report shows the image beside it
            example["image"] = images[example["id"]]
        per_item = result["amber"].pop("per_item")
        per_image["amber"] = {
            "measure": "amber",
            **bootstrap.by_image(
                ((images[i], counts) for i, counts in sorted(per_item.items())),
                list(amber.HEADLINE_COUNTERS),
                {k: inputs.amber.counters.get(k, 0.0) for k in amber.HEADLINE_COUNTERS},
            ).to_json(),
        }
    if inputs.zero_shot:
        result["zero_shot"] = {}
        for dataset, items, names in inputs.zero_shot:
            task = f"zeroshot-{dataset.name}"
            result["zero_shot"][dataset.name] = zeroshot.evaluate_dataset(
                items, names, classes[dataset.name], _one_reply_each(got[task], task), encoder
            )
        for name, scored in result["zero_shot"].items():
            per_image[f"zero_shot.{name}"] = {"measure": "zero_shot", **scored.pop("per_image").to_json()}
    if inputs.suite:
        suite_replies = {b.label: _one_reply_each(got[f"suite-{b.label}"], f"suite-{b.label}") for b, _ in inputs.suite}
        result["suite"] = {
            b.label: {"kind": b.kind, **score_benchmark(b.kind, items, suite_replies[b.label])}
            for b, items in inputs.suite
        }
        for b, items in inputs.suite:
            if b.kind == "pope":
                per_image[f"suite.{b.label}"] = {
                    "measure": "pope",
                    **pope_per_image(items, suite_replies[b.label]).to_json(),
                }
    if per_image:
        result[PER_IMAGE] = per_image
    return result


def write_metrics(storage: Storage, output: str, metrics: dict) -> dict:
    """metrics.json and the reports; the per-image counts (when any) go to per_image.json beside them.
    Returns what metrics.json holds."""
    metrics = dict(metrics)
    per_image = metrics.pop(PER_IMAGE, None)
    if per_image:
        storage.write_bytes(join(output, "per_image.json"), json.dumps(per_image, sort_keys=True).encode())
    storage.write_bytes(join(output, "report.md"), report.markdown(metrics).encode())
    storage.write_bytes(join(output, "report.html"), report.html(metrics).encode())
    storage.write_bytes(join(output, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True).encode())
    return metrics


def _reported(result: dict, key: str, metric: str) -> bool:
    """Whether a model's results hold a number at benchmark `key` ("amber", "zero_shot.<name>", ...), `metric`."""
    section, _, name = key.partition(".")
    tree = result.get(section)
    for part in ([name] if name else []) + metric.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return isinstance(tree, (int, float))


def effects(
    per_image: dict[str, dict[str, dict]],
    baseline: str,
    resamples: int,
    seed: int,
    results: dict[str, dict] | None = None,
) -> dict[str, dict]:
    """Each other model's deltas from the baseline with 95% intervals, paired bootstrap over images:
    model -> metric path (as in results, e.g. amber.generative.chair) -> {delta, ci95, resamples, images}.
    With `results`, only the metrics both models report (e.g. no F1 where AMBER ran generative items only)."""
    base = per_image.get(baseline, {})
    out: dict[str, dict] = {}
    for model, benchmarks in per_image.items():
        if model == baseline:
            continue
        out[model] = {}
        for key, counts in sorted(benchmarks.items()):
            if key not in base:
                continue
            try:
                found = bootstrap.paired_effects(
                    bootstrap.PerImage.from_json(base[key]),
                    bootstrap.PerImage.from_json(counts),
                    MEASURES[counts["measure"]],
                    resamples,
                    seed,
                )
            except ValueError as err:  # e.g. partial AMBER runs that scored different images: no paired interval
                log.warning("no bootstrap interval for %s on %s: %s", model, key, err)
                continue
            kept = {
                metric: effect
                for metric, effect in found.items()
                if results is None or all(_reported(results[m], key, metric) for m in (baseline, model))
            }
            out[model].update({f"{key}.{metric}": effect for metric, effect in kept.items()})
    return out


def scorers(cfg: EvaluateConfig, inputs: Inputs, nlp=None, encoder=None) -> tuple:
    """AMBER's NLP and the zero-shot text encoder, loaded when the inputs need them and none was given."""
    if inputs.amber is not None and amber_section(cfg).evaluation_type in ("a", "g") and nlp is None:
        from clipdpo.evaluate.nlp import load_nlp

        settings = amber_section(cfg).nlp
        nlp = load_nlp(settings.backend, settings.spacy_model, settings.nltk_data)
    if inputs.zero_shot and encoder is None:
        encoder = zeroshot.TextEncoder(zero_shot_section(cfg).text_encoder)
    return nlp, encoder


def evaluate_models(
    cfg: EvaluateConfig,
    output: str,
    storage: Storage | None = None,
    engine_factory: EngineFactory | None = None,
    nlp=None,
    encoder=None,
) -> dict:
    """Evaluate every model; returns (and writes) the metrics. `nlp`/`encoder` replace the configured ones."""
    storage = storage or Storage()
    engine_factory = engine_factory or (lambda spec: default_engine_factory(spec, cfg, storage))

    # 1. inputs, checked before any model loads; the NLP too (fail early, before hours of inference)
    inputs = read_inputs(storage, cfg)
    nlp, encoder = scorers(cfg, inputs, nlp, encoder)

    # 2. responses, model by model
    responses, inferred = answer_all(cfg, inputs.tasks, output, storage, engine_factory)

    # 3. scores (class embeddings are the same for every model: computed once per dataset)
    classes = {
        dataset.name: zeroshot.class_embeddings(names, encoder, zero_shot_section(cfg))
        for dataset, _, names in inputs.zero_shot
    }
    results = {spec.name: score_model(cfg, inputs, responses[spec.name], nlp, encoder, classes) for spec in cfg.models}
    metrics = assemble_metrics(
        cfg,
        results,
        inferred,
        {
            "amber_nlp": getattr(nlp, "description", None),
            "zero_shot_text_encoder": getattr(encoder, "description", None),
            "cpu": determinism.record(),
        },
    )
    return write_metrics(storage, output, metrics)


def benchmarks_fingerprint(cfg: EvaluateConfig) -> str:
    """What the numbers were measured on: the config's fields that decide a result (benchmarks, their data
    locations, decoding, scoring), the models left out. Two evaluations with the same fingerprint give comparable
    numbers; the promotion gate compares a run with the promoted model only then."""
    measured_on = {name: value for name, value in key_dict(cfg).items() if name != "models"}
    return hashlib.sha256(json.dumps(measured_on, sort_keys=True, default=str).encode()).hexdigest()[:16]


def assemble_metrics(cfg: EvaluateConfig, results: dict, inferred: dict[str, int], resources: dict) -> dict:
    """metrics.json from every model's results (the sequential run and the fan-out's merge share it), with each
    model's effects (bootstrap intervals); the per-image counts move from the results to PER_IMAGE."""
    per_image = {name: r[PER_IMAGE] for name, r in results.items() if PER_IMAGE in r}
    results = {name: {k: v for k, v in r.items() if k != PER_IMAGE} for name, r in results.items()}
    return {
        "complete": all(r.get("amber", {}).get("complete", True) for r in results.values()),
        "effects": effects(per_image, cfg.models[0].name, cfg.bootstrap_resamples, cfg.bootstrap_seed, results),
        PER_IMAGE: per_image,
        "models": [asdict(spec) for spec in cfg.models],
        "baseline": cfg.models[0].name,
        "benchmarks": benchmarks_fingerprint(cfg),
        "results": results,
        "resources": {
            "amber_nlp": resources.get("amber_nlp"),
            "amber_discriminative_mode": cfg.amber.discriminative_mode if cfg.amber else None,
            "amber_decoding": (
                {**asdict(cfg.amber.decoding), "description": cfg.amber.decoding.describe()} if cfg.amber else None
            ),
            "zero_shot_text_encoder": resources.get("zero_shot_text_encoder"),
            # the machine that scored (CPU model, code-path pins): numbers can move between CPUs
            "cpu": resources.get("cpu"),
        },
        "inferred_items": inferred,
    }
