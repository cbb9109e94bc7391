"""The evaluation fan-out on tiny models: one call per (model, task), merged into the same report as the
sequential run; a later run with a new trained model takes the base model's results from the cache."""

from __future__ import annotations

import json

import pytest

from clipdpo.config import from_dict
from clipdpo.demo import models as tiny
from clipdpo.evaluate import run as run_evaluate
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.evaluate.evaluation import evaluate_models
from clipdpo.evaluate.fanout import cache_uri, plan, restrict, task_names
from clipdpo.storage import Storage, join
from test_evaluate import as_json, eval_config, inputs, models  # noqa: F401 (fixtures)


def fan_out(config: dict, output: str) -> dict[str, int]:
    """Every (model, task) as its own call, as the pipeline's ParallelFor does, then the merge; inferred counts."""
    inferred: dict[str, int] = {}
    for item in plan(from_dict(EvaluateConfig, config)):
        record = run_evaluate(from_dict(EvaluateConfig, {**config, "only_model": item["model"],
                                                         "only_task": item["task"]}), output)
        inferred[f"{item['model']}|{item['task']}"] = record["inferred"]
    run_evaluate(from_dict(EvaluateConfig, {**config, "merge_tasks": True}), output)
    return inferred


CONFIG = {"models": [{"name": "base", "path": "/x/base"}, {"name": "trained", "path": "/x/trained"}],
          "amber": {"root": "s3://b/AMBER"}, "zero_shot": {"datasets": [{"name": "colours", "root": "s3://b/c"}]},
          "suite": [{"kind": "pope", "root": "s3://b/pope"}], "result_cache": "s3://b/eval-cache"}


def test_plan_and_restrict_name_every_unit():
    cfg = from_dict(EvaluateConfig, CONFIG)
    assert task_names(cfg) == ["amber", "zeroshot-colours", "suite-pope"]
    assert plan(cfg) == [{"model": m, "task": t} for m in ("base", "trained") for t in task_names(cfg)]
    one = restrict(cfg, "trained", "suite-pope")
    assert [m.name for m in one.models] == ["trained"] and one.amber is None and one.zero_shot is None
    assert [b.label for b in one.suite] == ["pope"]
    assert [d.name for d in restrict(cfg, "base", "zeroshot-colours").zero_shot.datasets] == ["colours"]
    with pytest.raises(ValueError, match="only_task 'suite-gqa'"):
        restrict(cfg, "base", "suite-gqa")
    with pytest.raises(ValueError, match="only_model 'x'"):
        restrict(cfg, "x", "amber")
    with pytest.raises(ValueError, match="set both"):
        from_dict(EvaluateConfig, {**CONFIG, "only_task": "amber"})


def test_cache_key_follows_model_content_and_result_deciding_config(tmp_path):
    storage = Storage()
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights-1")
    config = {**CONFIG, "models": [{"name": "base", "path": str(model)}]}

    def key(**changes) -> str:
        return cache_uri(storage, restrict(from_dict(EvaluateConfig, {**config, **changes}), "base", "amber"), "amber")

    first = key()
    assert first.startswith("s3://b/eval-cache/") and first.endswith("/result.json")
    assert key(batch_size=2, chunk_size=3, model_cache="/elsewhere") == first  # how, not what, is computed
    assert key(max_new_tokens=7) != first
    assert key(amber={"root": "s3://b/AMBER", "similarity_threshold": 0.7}) != first
    sampled = {"root": "s3://b/AMBER", "decoding": {"temperature": 1.0, "samples": 3}}
    assert len({first, key(amber=sampled), key(amber={**sampled, "decoding": {"temperature": 1.0, "samples": 2}})}) == 3
    renamed = {**config, "models": [{"name": "base-v1", "path": str(model)}]}
    assert cache_uri(storage, restrict(from_dict(EvaluateConfig, renamed), "base-v1", "amber"), "amber") == first
    (model / "model.safetensors").write_bytes(b"weights-2")  # same size, other content
    assert key() != first


@pytest.mark.slow
def test_fan_out_report_equals_sequential_and_base_is_evaluated_once(models, inputs, bucket, tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    storage = Storage()
    config = {**eval_config(models, inputs), "result_cache": join(bucket, "eval-cache")}
    sequential = evaluate_models(from_dict(EvaluateConfig, eval_config(models, inputs)), join(bucket, "seq"), storage)

    fanned = fan_out(config, join(bucket, "fan"))
    assert len(fanned) == 2 * 4  # (base, trained) x (amber, zeroshot-colours, suite-pope, suite-scienceqa)
    merged = json.loads(storage.read_bytes(join(bucket, "fan", "metrics.json")))
    assert merged == as_json(sequential)  # results, resources and inferred counts (27 items per model) alike
    for name in ("report.md", "report.html"):
        assert storage.read_bytes(join(bucket, "fan", name)) == storage.read_bytes(join(bucket, "seq", name))

    # a retraining run: same base and benchmarks, a new trained model; the base comes from the cache
    retrained = tiny.build_tiny_llava(str(tmp_path / "retrained"), seed=9)
    config["models"][1]["path"] = retrained
    again = fan_out(config, join(bucket, "fan2"))
    assert all(again[key] == 0 for key in again if key.startswith("base|"))
    assert sum(again[key] for key in again if key.startswith("trained|")) == 27
    assert storage.list(join(bucket, "fan2", "responses", "base")) == []  # no base inference at all
    assert storage.list(join(bucket, "fan2", "responses", "trained"))
    metrics = json.loads(storage.read_bytes(join(bucket, "fan2", "metrics.json")))
    assert metrics["results"]["base"] == merged["results"]["base"]
    assert metrics["inferred_items"] == {"base": 0, "trained": 27}

    # a changed benchmark setting is a different cache entry: the base is evaluated again for it
    config["amber"]["similarity_threshold"] = 0.7
    third = fan_out({**config, "suite": [], "zero_shot": None}, join(bucket, "fan3"))
    assert third["base|amber"] > 0
