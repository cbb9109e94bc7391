"""The evaluation fan-out on tiny models: one call per (model, task), merged into the same report as the
sequential run; a later run with a new trained model takes the base model's results from the cache."""

from __future__ import annotations

import json

import pytest
from test_evaluate import as_json, eval_config, inputs, models  # noqa: F401 (fixtures)

from clipdpo.config import ConfigError, from_dict
from clipdpo.demo import models as tiny
from clipdpo.evaluate import run as run_evaluate
from clipdpo.evaluate.config import EvaluateConfig
from clipdpo.evaluate.evaluation import evaluate_models
from clipdpo.evaluate.fanout import cache_uri, plan, restrict, task_names
from clipdpo.storage import Storage, join


def fan_out(config: dict, output: str) -> dict[str, int]:
    """Every (model, task) as its own call, as the pipeline's ParallelFor does, then the merge; inferred counts."""
    inferred: dict[str, int] = {}
    for item in plan(from_dict(EvaluateConfig, config)):
        record = run_evaluate(from_dict(EvaluateConfig, config), output, task=(item["model"], item["task"]))
        inferred[f"{item['model']}|{item['task']}"] = record["inferred"]
    run_evaluate(from_dict(EvaluateConfig, config), output, merge=True)
    return inferred


CONFIG = {
    "models": [{"name": "base", "path": "/x/base"}, {"name": "trained", "path": "/x/trained"}],
    "amber": {"root": "s3://b/AMBER"},
    "zero_shot": {"datasets": [{"name": "colours", "root": "s3://b/c"}]},
    "suite": [{"kind": "pope", "root": "s3://b/pope"}],
    "result_cache": "s3://b/eval-cache",
}


def test_plan_and_restrict_name_every_unit():
    cfg = from_dict(EvaluateConfig, CONFIG)
    assert task_names(cfg) == ["amber", "zeroshot-colours", "suite-pope"]
    assert plan(cfg) == [{"model": m, "task": t} for m in ("base", "trained") for t in task_names(cfg)]
    one = restrict(cfg, "trained", "suite-pope")
    assert [m.name for m in one.models] == ["trained"] and one.amber is None and one.zero_shot is None
    assert [b.label for b in one.suite] == ["pope"]
    assert [d.name for d in restrict(cfg, "base", "zeroshot-colours").zero_shot.datasets] == ["colours"]
    with pytest.raises(ValueError, match="task 'suite-gqa'"):
        restrict(cfg, "base", "suite-gqa")
    with pytest.raises(ValueError, match="model 'x'"):
        restrict(cfg, "x", "amber")
    with pytest.raises(ConfigError, match="unknown key"):  # how the work is split is no config value
        from_dict(EvaluateConfig, {**CONFIG, "only_task": "amber"})


def _benchmarks(root) -> dict:
    """Local benchmark folders for the key tests: AMBER data and images, a zero-shot class folder, POPE."""
    for folder, name, body in (
        ("AMBER", "query.json", b"[]"),
        ("image", "AMBER_1.jpg", b"jpeg"),
        ("colours/red", "a.png", b"png-red"),
        ("colours/blue", "b.png", b"png-blue"),
        ("pope", "questions.jsonl", b"{}"),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(body)
    return {
        "amber": {"root": str(root / "AMBER")},
        "zero_shot": {"datasets": [{"name": "colours", "root": str(root / "colours")}]},
        "suite": [{"kind": "pope", "root": str(root / "pope")}],
    }


def test_cache_key_follows_model_content_and_result_deciding_config(tmp_path):
    storage = Storage()
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights-1")
    benchmarks = _benchmarks(tmp_path)
    config = {**CONFIG, **benchmarks, "models": [{"name": "base", "path": str(model)}]}

    def key(**changes) -> str:
        return cache_uri(storage, restrict(from_dict(EvaluateConfig, {**config, **changes}), "base", "amber"), "amber")

    first = key()
    assert first.startswith("s3://b/eval-cache/") and first.endswith("/result.json")
    assert key(batch_size=2, chunk_size=3, model_cache="/elsewhere") == first  # how, not what, is computed
    assert key(max_new_tokens=7) != first
    amber = benchmarks["amber"]
    assert key(amber={**amber, "similarity_threshold": 0.7}) != first
    sampled = {**amber, "decoding": {"temperature": 1.0, "samples": 3}}
    assert len({first, key(amber=sampled), key(amber={**sampled, "decoding": {"temperature": 1.0, "samples": 2}})}) == 3
    renamed = {**config, "models": [{"name": "base-v1", "path": str(model)}]}
    assert cache_uri(storage, restrict(from_dict(EvaluateConfig, renamed), "base-v1", "amber"), "amber") == first
    (model / "model.safetensors").write_bytes(b"weights-2")  # same size, other content
    assert key() != first


def _keys(storage: Storage, config: dict) -> dict[str, str]:
    cfg = from_dict(EvaluateConfig, config)
    return {task: cache_uri(storage, restrict(cfg, "base", task), task) for task in task_names(cfg)}


def test_cache_key_follows_benchmark_content_not_its_path(tmp_path):
    """Before: keyed by the benchmark's path, a changed class folder served the old base result (top-1 33.3
    where the real one was 16.7), into the promotion gate."""
    storage = Storage()
    config = {**CONFIG, **_benchmarks(tmp_path), "models": [{"name": "base", "path": "hub/base"}]}
    first = _keys(storage, config)
    assert _keys(storage, config) == first  # nothing changed: the same entries
    (tmp_path / "colours" / "red" / "a.png").rename(tmp_path / "colours" / "blue" / "a.png")  # relabelled
    second = _keys(storage, config)
    assert second["zeroshot-colours"] != first["zeroshot-colours"]
    assert second["amber"] == first["amber"] and second["suite-pope"] == first["suite-pope"]  # only that task
    (tmp_path / "colours" / "blue" / "b.png").write_bytes(b"png-BLUE")  # same size, other image
    assert _keys(storage, config)["zeroshot-colours"] != second["zeroshot-colours"]
    (tmp_path / "image" / "AMBER_1.jpg").write_bytes(b"JPEG")  # AMBER's images (default: <root>/../image)
    assert _keys(storage, config)["amber"] != first["amber"]
    (tmp_path / "pope" / "questions.jsonl").write_bytes(b'{"a": 1}\n')
    assert _keys(storage, config)["suite-pope"] != first["suite-pope"]


def test_cache_key_follows_the_nlp_model_and_the_scoring_code(tmp_path, monkeypatch):
    from clipdpo.evaluate import fanout

    storage = Storage()
    spacy_model = tmp_path / "spacy-model"
    (spacy_model / "vocab").mkdir(parents=True)
    (spacy_model / "meta.json").write_text('{"name": "core_web_md", "version": "3.7.1"}')
    (spacy_model / "vocab" / "vectors").write_bytes(b"v1")
    benchmarks = _benchmarks(tmp_path)
    amber = {**benchmarks["amber"], "nlp": {"backend": "spacy", "spacy_model": str(spacy_model)}}
    config = {**CONFIG, **benchmarks, "amber": amber, "models": [{"name": "base", "path": "hub/base"}]}
    first = _keys(storage, config)
    (spacy_model / "vocab" / "vectors").write_bytes(b"v2")  # other vectors, same folder and meta
    second = _keys(storage, config)
    assert second["amber"] != first["amber"] and second["zeroshot-colours"] == first["zeroshot-colours"]
    other = {**amber, "nlp": {"backend": "spacy", "spacy_model": "en_core_web_lg"}}  # a package by its version
    assert _keys(storage, {**config, "amber": other})["amber"] != second["amber"]
    # the code that answers and scores, by its source: an edited scorer misses every entry
    scorer = tmp_path / "code" / "scorer.py"
    scorer.parent.mkdir()
    scorer.write_text("THRESHOLD = 0.8\n")
    monkeypatch.setattr(fanout, "_SCORING_CODE", (scorer.parent,))
    fanout.scoring_code_digest.cache_clear()
    try:
        before = _keys(storage, config)
        scorer.write_text("THRESHOLD = 0.7\n")
        fanout.scoring_code_digest.cache_clear()
        after = _keys(storage, config)
    finally:
        fanout.scoring_code_digest.cache_clear()
    assert before != second and all(after[task] != before[task] for task in before)


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

    # a changed benchmark content at the same path too: one red image relabelled blue; the base's zero-shot
    # result is computed again (9 captions), not served from the entry of the old folders
    colours = config["zero_shot"]["datasets"][0]["root"]
    moved = storage.read_bytes(join(colours, "c_red", "0.jpg"))
    storage.delete(join(colours, "c_red", "0.jpg"))
    storage.write_bytes(join(colours, "c_blue", "9.jpg"), moved)
    fourth = fan_out({**config, "suite": [], "amber": None}, join(bucket, "fan4"))
    assert fourth["base|zeroshot-colours"] == 9
    base_top1 = json.loads(storage.read_bytes(join(bucket, "fan4", "metrics.json")))["results"]["base"]["zero_shot"]
    assert base_top1["colours"]["images"] == 9
