"""Iterative rounds (clipdpo.rounds, the round steps of clipdpo.steps): the layout, the round's captioner and
train config, the verdict after each round with the gate's rules, and the steps chained on hand-made train outputs and
evaluation records: round 2 starts from round 1's model, a worse round stops the rounds and the run's evaluation
keeps the better model under the trained model's name."""

from __future__ import annotations

import json

import pytest

from clipdpo import outputref, rounds, steps
from clipdpo.config import ConfigError
from clipdpo.engines import ModelSpec
from clipdpo.evaluate.fanout import task_record_uri
from clipdpo.gate import Rule, default_rules
from clipdpo.stages import validate
from clipdpo.storage import Storage, join

SUITE_RULES = [Rule("suite.*.headline", "higher", "improve")]
GATE_CONFIG = json.dumps({"rules": [{"metric": "suite.*.headline", "better": "higher", "require": "improve"}]})
EVALUATE_CONFIG = json.dumps({"engine": "hf", "suite": [{"kind": "pope", "root": "/data/pope"}]})
TRAIN_CONFIG = json.dumps({"model": "tiny/base", "beta": 0.2})


def test_round_one_keeps_the_one_round_layout_and_later_rounds_have_their_own():
    root = "s3://b/runs/r"
    assert rounds.round_root(root, 1) == root  # a one-round run's artifacts are round 1's
    assert rounds.round_root(root, 3) == "s3://b/runs/r/round-3"
    assert rounds.round_folder(root, 1) == "s3://b/runs/r/round-1"  # round 1's evaluation and decision
    assert steps.round_evaluation_uri(root, 1) == "s3://b/runs/r/round-1/evaluation"
    assert rounds.round_name(2) == "round2"
    with pytest.raises(ValueError, match="rounds count from 1"):
        rounds.round_root(root, 0)


def test_a_later_round_captions_with_the_model_before_it_and_that_captioners_engine_settings():
    pool = [
        ModelSpec(name="mobilevlm", path="mtgv/MobileVLM", engine="hf", trust_remote_code=True),
        ModelSpec(name="llava", path="llava-hf/llava-1.5-7b-hf", gpu_memory_utilization=0.8),
    ]
    spec = rounds.round_captioner(pool, "llava-hf/llava-1.5-7b-hf", "s3://b/r/model/model", "round1")
    assert spec == ModelSpec(name="round1", path="s3://b/r/model/model", gpu_memory_utilization=0.8)
    # a trained model that captioned nothing before: the first captioner's settings
    assert rounds.round_captioner(pool, "other/model", "/m", "round2").engine == "hf"


def results(pope: float) -> dict:
    return {"suite": {"pope": {"kind": "pope", "headline": pope}}}


def metrics(round_index: int, base: float, trained: float) -> dict:
    return {"baseline": "base", "results": {"base": results(base), rounds.round_name(round_index): results(trained)}}


def test_a_round_is_judged_against_the_round_before_with_the_gates_rules():
    first = rounds.judge(1, SUITE_RULES, metrics(1, 80.0, 82.0), None)
    assert (first["passed"], first["continue"], first["kept"], first["reference"]) == (True, True, 1, "base")
    # round 2 beats the base but not round 1: worse than the round before, the rounds stop and round 1 is kept
    second = rounds.judge(2, SUITE_RULES, metrics(2, 80.0, 81.0), metrics(1, 80.0, 82.0))
    assert (second["passed"], second["continue"], second["kept"], second["reference"]) == (False, False, 1, "round1")
    assert second["checks"][0]["candidate"] == 81.0 and second["checks"][0]["reference"] == 82.0
    third = rounds.judge(3, SUITE_RULES, metrics(3, 80.0, 83.0), metrics(2, 80.0, 82.5))
    assert (third["passed"], third["kept"]) == (True, 3)
    # round 1 worse than the base: nothing better was trained, round 1 stays (the gate judges it, and refuses)
    worse = rounds.judge(1, SUITE_RULES, metrics(1, 80.0, 79.0), None)
    assert (worse["passed"], worse["continue"], worse["kept"]) == (False, False, 1)
    # no evaluation configured: nothing to judge, the rounds go on
    assert rounds.judge(2, default_rules(), None, None) == {
        "passed": None,
        "checks": [],
        "reference": None,
        "continue": True,
        "kept": 2,
    }


def test_a_later_rounds_train_config_starts_from_the_model_before_it():
    config = rounds.round_train_config({"model": "hub/base", "revision": "abc", "beta": 0.2}, "/m1", 2)
    assert config == {"model": "/m1", "beta": 0.2}  # the model is also DPO's reference: the train config's model
    lora = {"finetune": "lora", "save_merged": False}
    with pytest.raises(ConfigError, match="save_merged"):
        rounds.round_train_config(lora, "/m1", 2)
    # refused before anything runs, where the user is; one round needs no merged model
    with pytest.raises(ConfigError, match="save_merged"):
        validate({"train": lora}, rounds=2)
    validate({"train": lora}, rounds=1)


def write_trained(storage: Storage, artifact: str, fingerprint: str) -> None:
    """What a finished train step leaves: its summary (the version) and the model folder."""
    storage.write_bytes(join(artifact, "train_summary.json"), json.dumps({"fingerprint": fingerprint}).encode())
    storage.write_bytes(join(artifact, "model", "config.json"), b"{}")


def write_round_evaluation(storage: Storage, run_root: str, index: int, base: float, trained: float) -> str:
    """Round k's evaluation as its fan-out leaves it (a record per model and task), merged by the round's step."""
    output = steps.round_evaluation_uri(run_root, index)
    for name, value in (("base", base), (rounds.round_name(index), trained)):
        record = {"model": name, "task": "suite-pope", "result": results(value), "inferred": 1, "resources": {}}
        storage.write_bytes(task_record_uri(output, name, "suite-pope"), json.dumps(record).encode())
    model = steps.artifact_uri(rounds.round_root(run_root, index), "train")
    return steps.round_evaluate_merge_step(run_root, index, model, TRAIN_CONFIG, EVALUATE_CONFIG)


def test_rounds_chain_stop_on_a_worse_round_and_the_run_keeps_the_better_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage, run_root = Storage(), str(tmp_path / "run")
    first_model = join(run_root, "model")
    write_trained(storage, first_model, "f1")

    evaluation = write_round_evaluation(storage, run_root, 1, base=80.0, trained=82.0)
    assert steps.round_evaluation_plan(run_root, 1, first_model + "#f1", TRAIN_CONFIG, EVALUATE_CONFIG) == [
        "base|suite-pope|f1",
        "round1|suite-pope|f1",
    ]
    verdict, decision = steps.round_check_step(run_root, 1, evaluation, "", GATE_CONFIG)
    assert verdict == rounds.CONTINUE

    root, train_config = steps.round_start_step(run_root, 2, outputref.ref(storage, first_model), TRAIN_CONFIG)
    assert root == join(run_root, "round-2")
    assert json.loads(train_config) == {"model": join(first_model, "model"), "beta": 0.2}
    assert outputref.trusted(storage, root)  # round.json versions the root kfp's cache keeps (pipelines/local_cache)

    write_trained(storage, join(root, "model"), "f2")
    evaluation = write_round_evaluation(storage, run_root, 2, base=80.0, trained=81.0)
    verdict, decision = steps.round_check_step(run_root, 2, evaluation, decision, GATE_CONFIG)
    assert verdict == rounds.STOP
    record = json.loads(storage.read_bytes(outputref.plain(decision)))
    assert [each["passed"] for each in record["rounds"]] == [True, False]
    assert record["kept"]["round"] == 1 and record["kept"]["path"] == join(first_model, "model")

    final = steps.rounds_evaluation_step(run_root, decision, TRAIN_CONFIG, EVALUATE_CONFIG)
    assert outputref.plain(final) == join(run_root, "evaluation")  # where the gate and the report read
    merged = json.loads(storage.read_bytes(join(run_root, "evaluation", "metrics.json")))
    assert [m["name"] for m in merged["models"]] == ["base", "round1", "round2", "clip-dpo"]
    assert merged["baseline"] == "base"
    assert merged["models"][-1]["path"] == join(first_model, "model")  # the gate's candidate: the kept model
    headlines = {name: r["suite"]["pope"]["headline"] for name, r in merged["results"].items()}
    assert headlines == {"base": 80.0, "round1": 82.0, "round2": 81.0, "clip-dpo": 82.0}
    kept = json.loads(storage.read_bytes(join(run_root, rounds.ROUNDS_RECORD)))
    assert rounds.summary_line(kept) == (
        f"round 1 passed vs base; round 2 FAILED vs round1; rounds stopped there; kept round 1 "
        f"({join(first_model, 'model')})"
    )


def test_a_later_round_generates_with_the_model_before_it_and_its_version(tmp_path, monkeypatch):
    """Round 2's generate: round 1's model captions, and its version is in the candidates' fingerprint (the path
    stays when round 1 is retrained, the version does not)."""
    from clipdpo import generate

    storage, run_root = Storage(), str(tmp_path / "run")
    write_trained(storage, join(run_root, "model"), "f1")
    calls = []
    monkeypatch.setattr(generate, "run", lambda cfg, source, output, **kw: calls.append((cfg, source, output, kw)))
    generate_config = json.dumps({"captioners": [{"name": "tiny", "path": "tiny/base", "engine": "hf"}]})
    steps.round_generate_step(run_root, 2, generate_config, TRAIN_CONFIG, 1, 2)
    cfg, source, output, kw = calls[0]
    assert [(c.name, c.path, c.engine) for c in cfg.captioners] == [("round1", join(run_root, "model/model"), "hf")]
    assert source == join(run_root, "images") and output == join(run_root, "round-2", "candidates")
    assert kw["input_fingerprints"] == ["f1"] and kw["shard"].index == 1 and kw["overwrite"]
    with pytest.raises(ValueError, match="round 1 starts from the configured model"):
        steps.round_generate_step(run_root, 1, generate_config, TRAIN_CONFIG)


def test_a_model_retrained_at_the_same_prefix_is_copied_again_not_served_from_the_old_copy(bucket, tmp_path):
    """A rerun retrains round 1 where it was; round 2 trains and captions from that prefix: its local copy must be
    the new model, not the one an earlier run copied there (the copy is keyed by the prefix and its content)."""
    from clipdpo.storage import local_model_dir

    storage, model = Storage(), f"{bucket}/runs/r/model/model"
    storage.write_bytes(join(model, "model.safetensors"), b"weights of the first training")
    first = local_model_dir(storage, model, str(tmp_path))
    assert local_model_dir(storage, model, str(tmp_path)) == first  # unchanged: copied once
    storage.write_bytes(join(model, "model.safetensors"), b"weights of the retraining")
    again = local_model_dir(storage, model, str(tmp_path))
    assert open(f"{again}/model.safetensors", "rb").read() == b"weights of the retraining"
