"""Each pipeline step's kfp Metrics, read back from what the step wrote (report_fixture's run, worked by hand)."""

from __future__ import annotations

import json

import pytest
import report_fixture as fx

from clipdpo.report.step_metrics import log_to, step_metrics


@pytest.fixture
def run_root(tmp_path) -> str:
    return fx.write_run(str(tmp_path / "run"))


def test_score_rows_and_mean_score_per_category(run_root):
    values = step_metrics("score", run_root)
    assert values["rows"] == 9 and values["shards"] == 1
    # people: img0 30, 26, 28 and img3 33, 27 -> 144 / 5; objects: 31, 29.5; scenes: 25 (the qa row has no score)
    assert values["mean_clip_score.people"] == pytest.approx(28.8)
    assert values["mean_clip_score.objects"] == pytest.approx(30.25)
    assert values["mean_clip_score.scenes"] == pytest.approx(25.0)


def test_filter_funnel_whole_and_per_shard(run_root):
    values = step_metrics("filter", run_root)
    assert values == {"rows": 4.0, "shards": 1.0, "seconds": 0.5, **{k: float(v) for k, v in fx.FUNNEL.items()}}
    assert step_metrics("filter", run_root, shard=(0, 1)) == values  # its one shard is the whole
    assert step_metrics("filter", run_root, shard=(1, 2)) == {"rows": 0.0, "shards": 0.0}  # shard 1 of 2 has none


def test_train_evaluate_and_report(reported_run):
    run_root = reported_run.root
    assert step_metrics("train", run_root) == {
        "final_loss": pytest.approx(0.49),
        "reward_accuracy": 1.0,
        "reward_margin": pytest.approx(0.08),
        "samples_per_s": 8.0,
        "steps": 4.0,
    }
    values = step_metrics("evaluate", run_root)
    assert values["base.amber.generative.chair"] == 10.0 and values["clip-dpo.amber.existence.f1"] == 80.0
    assert not any("examples" in key for key in values)
    assert step_metrics("report", run_root) == json.loads(open(f"{run_root}/report/headline.json").read())


def test_nothing_evaluated_and_unknown_stage(tmp_path):
    assert step_metrics("evaluate", str(tmp_path)) == {}
    with pytest.raises(ValueError, match="unknown stage 'plan'"):
        step_metrics("plan", str(tmp_path))


def test_log_to_a_kfp_metrics_artifact(tmp_path):
    from kfp.dsl import Metrics

    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    log_to(metrics, {"rows": 3.0, "final_loss": 0.5})
    assert metrics.metadata == {"final_loss": 0.5, "rows": 3.0}
    # the file kfp's local cache needs to find, holding the same numbers
    assert json.loads((tmp_path / "metrics").read_text()) == {"final_loss": 0.5, "rows": 3.0}


def test_artifact_uris_match_the_steps():
    from clipdpo import stages, steps
    from clipdpo.report import step_metrics as sm

    for name in stages.NAMES:
        assert sm.artifact_uri("s3://b/run", name) == steps.artifact_uri("s3://b/run", name)
