"""The promotion gate: its rules on hand-made result dicts, the conditional pointer on the loopback S3
server, and the gate step on a run's metrics.json (a better model moves the pointer, a worse one not)."""

from __future__ import annotations

import json

import pytest

from clipdpo import gate
from clipdpo.config import ConfigError, from_dict
from clipdpo.steps import gate_step
from clipdpo.storage import Storage, join


def results(score: float, chair: float, pope: float = 85.0, top1: float = 50.0) -> dict:
    return {
        "amber": {"amber_score": score, "generative": {"chair": chair}},
        "suite": {"pope": {"headline": pope}, "scienceqa": {"headline": 60.0}},
        "zero_shot": {"colours": {"top1": top1}},
    }


def verdicts(checks) -> dict[str, bool]:
    return {each.metric: each.passed for each in checks}


def test_default_rules_need_amber_up_chair_down_and_every_benchmark_held():
    passed, checks = gate.decide(gate.default_rules(), results(80.0, 9.0), results(78.0, 10.0))
    assert passed and verdicts(checks) == {
        "amber.amber_score": True,
        "amber.generative.chair": True,
        "suite.pope.headline": True,
        "suite.scienceqa.headline": True,
        "zero_shot.colours.top1": True,
    }
    # equal AMBER score is not an improvement; a CHAIR that rose fails
    passed, checks = gate.decide(gate.default_rules(), results(78.0, 11.0), results(78.0, 10.0))
    assert not passed
    assert verdicts(checks)["amber.amber_score"] is False and verdicts(checks)["amber.generative.chair"] is False


def test_benchmark_tolerance_allows_small_losses_only():
    reference = results(78.0, 10.0, pope=85.0, top1=50.0)
    within = gate.decide(gate.default_rules(), results(80.0, 9.0, pope=84.0, top1=49.5), reference)
    assert within[0]  # 1.0 and 0.5 points lost: within the default tolerance of 1 point
    beyond = gate.decide(gate.default_rules(), results(80.0, 9.0, pope=83.9), reference)
    assert not beyond[0] and verdicts(beyond[1])["suite.pope.headline"] is False
    check = next(c for c in beyond[1] if c.metric == "suite.pope.headline")
    assert check.candidate == 83.9 and check.reference == 85.0 and "must be >= -1" in check.why


def test_missing_values_fail_on_the_candidate_side_only():
    rules = [gate.Rule("amber.amber_score"), gate.Rule("suite.*.headline", require="hold", tolerance=1.0)]
    candidate = {"suite": {"pope": {"headline": 80.0}, "gqa": {"headline": 50.0}}}
    reference = {"amber": {"amber_score": 70.0}, "suite": {"pope": {"headline": 80.0}}}
    passed, checks = gate.decide(rules, candidate, reference)
    by_metric = {c.metric: c for c in checks}
    assert not passed and by_metric["amber.amber_score"].why == "the candidate has no value"
    assert by_metric["suite.gqa.headline"].passed  # a benchmark new in the candidate has nothing to lose against


def test_rules_from_config_and_bad_rules_named():
    cfg = from_dict(gate.GateConfig, {"rules": [{"metric": "amber.generative.chair", "better": "lower"}]}, "gate")
    assert cfg.rules == [gate.Rule("amber.generative.chair", "lower", "improve", 0.0)]
    with pytest.raises(ValueError, match="better 'up'"):
        from_dict(gate.GateConfig, {"rules": [{"metric": "x", "better": "up"}]}, "gate")
    with pytest.raises(ConfigError):
        from_dict(gate.GateConfig, {"rule": []}, "gate")


def test_decision_markdown_lists_each_check():
    passed, checks = gate.decide(gate.default_rules(), results(70.0, 12.0), results(78.0, 10.0))
    record = gate.decision_record(passed, checks, {"model": "s3://b/new"}, {"model": "s3://b/old"})
    text = gate.markdown(record)
    assert "REFUSED" in text and "| amber.amber_score | 70.00 | 78.00 |" in text and "FAIL" in text


def test_pointer_moves_only_from_the_state_it_was_read_in(bucket):
    storage = Storage()
    uri = join(bucket, "promoted")
    assert gate.read_pointer(storage, uri) == (None, None)
    gate.move_pointer(storage, uri, {"model": "m1"}, None)  # If-None-Match: *
    with pytest.raises(gate.PointerMoved):
        gate.move_pointer(storage, uri, {"model": "m-late"}, None)  # someone promoted first
    current, etag = gate.read_pointer(storage, uri)
    assert current == {"model": "m1"} and etag
    gate.move_pointer(storage, uri, {"model": "m2"}, etag)  # If-Match on the ETag read
    with pytest.raises(gate.PointerMoved):
        gate.move_pointer(storage, uri, {"model": "m3"}, etag)  # stale ETag
    assert gate.read_pointer(storage, uri)[0] == {"model": "m2"}


def write_run(storage: Storage, root: str, base: dict, trained: dict, benchmarks: str | None = None) -> str:
    report = join(root, "evaluation")
    metrics = {
        "complete": True,
        **({"benchmarks": benchmarks} if benchmarks else {}),
        "baseline": "base",
        "results": {"base": base, "clip-dpo": trained},
        "models": [{"name": "base", "path": "tiny/base"}, {"name": "clip-dpo", "path": join(root, "model")}],
    }
    storage.write_bytes(join(report, "metrics.json"), json.dumps(metrics).encode())
    return report


def test_gate_step_promotes_a_better_model_and_refuses_a_worse_one(bucket, capsys, tmp_path):
    storage = Storage()
    pointer = join(bucket, "promoted")
    # run 1: nothing promoted yet, so the trained model is judged against its base; it is better
    first = join(bucket, "runs", "r1")
    decision_uri = gate_step(first, write_run(storage, first, results(70.0, 12.0), results(75.0, 10.0)), "{}")
    record = json.loads(storage.read_bytes(decision_uri))
    assert decision_uri == join(first, "gate", "decision.json")
    assert record["passed"] and record["pointer"]["moved"] and record["reference"]["name"] == "base"
    assert gate.read_pointer(storage, pointer)[0]["model"] == join(first, "model")

    # run 2: worse than the promoted model (though better than its own base): refused, pointer unchanged
    second = join(bucket, "runs", "r2")
    before = storage.read_bytes(pointer)
    record = json.loads(
        storage.read_bytes(
            gate_step(second, write_run(storage, second, results(60.0, 15.0), results(74.0, 11.0)), "{}")
        )
    )
    assert not record["passed"] and not record["pointer"]["moved"]
    assert record["reference"]["model"] == join(first, "model")
    failed = {c["metric"] for c in record["checks"] if not c["passed"]}
    assert failed == {"amber.amber_score", "amber.generative.chair"}
    assert storage.read_bytes(pointer) == before
    assert gate.main(["--decision", join(second, "gate", "decision.json")]) == 1
    assert "REFUSED" in capsys.readouterr().out

    # run 3: better than the promoted one: the pointer moves to it
    third = join(bucket, "runs", "r3")
    gate_step(third, write_run(storage, third, results(60.0, 15.0), results(76.0, 9.5)), "{}")
    assert gate.read_pointer(storage, pointer)[0]["model"] == join(third, "model")
    summary = tmp_path / "summary.md"
    assert gate.main(["--decision", join(third, "gate", "decision.json"), "--summary", str(summary)]) == 0
    assert "PASSED: promoted" in summary.read_text()


def test_a_promoted_model_measured_on_other_benchmarks_is_not_the_reference(bucket):
    """Two runs on different benchmarks (another world, a new benchmark set): the second is judged against its
    own base, not against numbers measured elsewhere; same benchmarks: against the promoted model."""
    storage = Storage()
    pointer = join(bucket, "promoted")
    first = join(bucket, "runs", "world0")
    gate_step(first, write_run(storage, first, results(85.0, 10.0), results(90.0, 6.6), "bench-a"), "{}")
    assert gate.read_pointer(storage, pointer)[0]["benchmarks"] == "bench-a"
    # worse than world 0's promoted numbers, better than its own base, on other benchmarks: promoted
    other = join(bucket, "runs", "world1")
    record = json.loads(
        storage.read_bytes(
            gate_step(other, write_run(storage, other, results(80.0, 14.0), results(84.0, 10.0), "bench-b"), "{}")
        )
    )
    assert record["passed"] and record["reference"]["name"] == "base"
    assert "measured on other benchmarks (bench-a vs this run's bench-b)" in record["reference"]["note"]
    assert "measured on other benchmarks" in gate.markdown(record)
    # the same benchmarks as the now promoted model: judged against it, and this one is worse
    again = join(bucket, "runs", "world1-again")
    record = json.loads(
        storage.read_bytes(
            gate_step(again, write_run(storage, again, results(80.0, 14.0), results(83.0, 11.0), "bench-b"), "{}")
        )
    )
    assert not record["passed"] and record["reference"]["model"] == join(other, "model")


def test_the_benchmarks_fingerprint_follows_what_is_measured_not_the_models():
    from dataclasses import replace

    from clipdpo.engines import ModelSpec
    from clipdpo.evaluate.config import AmberConfig, EvaluateConfig
    from clipdpo.evaluate.evaluation import benchmarks_fingerprint

    cfg = EvaluateConfig(models=[ModelSpec(name="base", path="m/base")], amber=AmberConfig(root="s3://b/amber-a"))
    same = replace(cfg, models=[ModelSpec(name="base", path="m/other"), ModelSpec(name="new", path="m/new")])
    assert benchmarks_fingerprint(cfg) == benchmarks_fingerprint(same)
    assert benchmarks_fingerprint(cfg) != benchmarks_fingerprint(replace(cfg, amber=AmberConfig(root="s3://b/x")))
    assert benchmarks_fingerprint(cfg) != benchmarks_fingerprint(replace(cfg, max_new_tokens=64))


def test_ci_submits_then_a_later_job_shows_the_gate_and_fails_on_refusal():
    """Retraining submits and returns (a hosted runner stops a job long before a training run ends); the
    scheduled gate job reads the decision once the run has ended, shows it, and fails on a refusal."""
    import os

    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workflows = os.path.join(root, ".github", "workflows")
    steps = yaml.safe_load(open(os.path.join(workflows, "retrain.yml")))["jobs"]["retrain"]["steps"]
    pipeline = next(step for step in steps if "make pipeline-run" in step.get("run", ""))
    assert float(pipeline["env"]["CLIPDPO_WAIT_HOURS"]) == 0
    assert not any("-m clipdpo.gate" in step.get("run", "") for step in steps)
    gate_jobs = yaml.safe_load(open(os.path.join(workflows, "retrain-gate.yml")))["jobs"]
    gate_steps = [
        step for job in gate_jobs.values() for step in job["steps"] if "-m clipdpo.gate" in step.get("run", "")
    ]
    assert len(gate_steps) == 1
    assert "gate/decision.json" in gate_steps[0]["run"] and '--summary "$GITHUB_STEP_SUMMARY"' in gate_steps[0]["run"]
    assert "continue-on-error" not in gate_steps[0]  # gate.main exits 1 on a refusal: the job fails
