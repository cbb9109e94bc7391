"""`make pipeline-run` without a cluster: the real kfp pipeline through kfp's local runner, on the
loopback S3 server, with the built-in default (tiny models): images -> ... -> a trained model -> its
evaluation against the base model on the demo benchmarks."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest


def summary_table(out: str) -> list[str]:
    """The lines of the run's closing summary, from its header on."""
    headers = list(re.finditer(r"^step\s+cached\s+rows\s+seconds$", out, re.M))
    assert headers, out[-2000:]
    return out[headers[-1].start() :].splitlines()


@pytest.mark.slow(seconds=200)  # three demo runs; seconds: for the xdist order (tests/conftest.py)
def test_pipeline_runs_end_to_end_locally_and_reuses_finished_steps(s3_server, tmp_path, capsys):
    from clipdpo.artifacts import Artifact
    from clipdpo.storage import Storage, join
    from pipelines.run import main

    bucket = f"p-{uuid.uuid4().hex[:10]}"
    run_id = "e2e"
    argv = ["--run-id", run_id, "--bucket", bucket, "--state-dir", str(tmp_path / "state"), "--shards", "2"]
    started = time.monotonic()
    assert main(argv) == 0
    first = time.monotonic() - started
    root = f"s3://{bucket}/runs/{run_id}"
    storage = Storage()
    pairs = Artifact.open(storage, join(root, "pairs"), kind="pairs")
    scores = Artifact.open(storage, join(root, "scores"), kind="scores")
    assert pairs.manifest.rows > 0 and len(scores.shard_names) == 3  # 10 images in shards of 4
    summary = json.loads(storage.read_bytes(join(root, "model", "train_summary.json")))
    assert summary["pairs"] == join(root, "pairs") and summary["steps"] >= 1
    assert storage.exists(join(root, "model", "model", "model.safetensors"))
    metrics = json.loads(storage.read_bytes(join(root, "evaluation", "metrics.json")))
    assert [m["name"] for m in metrics["models"]] == ["base", "clip-dpo"] and metrics["complete"] is True
    assert metrics["models"][1]["path"] == join(root, "model", "model")  # the model this run trained
    for result in metrics["results"].values():
        assert set(result) == {"amber", "zero_shot", "suite"} and "amber_score" in result["amber"]
    assert "| Δ clip-dpo |" in storage.read_bytes(join(root, "evaluation", "report.md")).decode()
    local_report = tmp_path / "state" / "reports" / run_id / "evaluation" / "report.md"
    assert local_report.read_text() == storage.read_bytes(join(root, "evaluation", "report.md")).decode()
    # the run report: one file with every figure and the qualitative examples, copied beside the state
    page = (tmp_path / "state" / "reports" / run_id / "report.html").read_text()
    assert page == storage.read_bytes(join(root, "report", "report.html")).decode()
    for figure in ("training_curves", "filter_funnel", "clip_scores", "caption_lengths", "amber"):
        assert f"alt='{figure}' src='data:image/png;base64," in page
    assert page.count("alt='AMBER ") >= 2 and "Qualitative examples" in page
    # evaluate ran as a fan-out: one record per (model, task), merged into that report
    records = storage.list(join(root, "evaluation", "tasks"))
    assert len(records) == 2 * (1 + len(result["zero_shot"]) + len(result["suite"]))
    assert all(json.loads(storage.read_bytes(uri))["inferred"] > 0 for uri in records)  # a fresh bucket: no cache
    decision = json.loads(storage.read_bytes(join(root, "gate", "decision.json")))
    assert decision["reference"]["name"] == "base" and decision["candidate"]["model"] == join(root, "model", "model")
    promoted = f"s3://{bucket}/promoted"
    assert storage.exists(promoted) == (decision["passed"] and decision["pointer"]["moved"])
    out = capsys.readouterr().out
    assert "finished" in out and join(root, "model") in out
    assert "## Promotion gate:" in out and ("PROMOTED" in out or "REFUSED" in out)
    # the summary: every step, run (not cached) the first time, with its rows; then the report's path
    table = summary_table(out)
    steps = {line.split()[0]: line.split()[1:] for line in table[1:] if line.strip() and not line.startswith("metric")}
    for step in ("ingest", "generate-shard[0]", "score-finalize", "filter-pairs", "train", "evaluate-merge", "report"):
        assert steps[step][0] == "no", (step, table)
    assert steps["cleanup-train-jobs"][0] == "no", table  # the run's exit task ran (launcher local: nothing to do)
    assert steps["ingest"][1] == "10" and f"report: {tmp_path / 'state' / 'reports' / run_id / 'report.html'}" in out

    started = time.monotonic()
    assert main(argv) == 0  # same inputs and configs: kfp's cache and the stages' own checks reuse everything
    second = time.monotonic() - started
    assert json.loads(storage.read_bytes(join(root, "model", "train_summary.json")))["seconds"] == summary["seconds"]
    out = capsys.readouterr().out
    table = summary_table(out)
    cached = {line.split()[0]: line.split()[1] for line in table[1:] if line.strip()}
    assert (cached["ingest"], cached["train"], cached["report"]) == ("yes", "yes", "yes"), out
    assert cached["cleanup-train-jobs"] == "no", out  # the exit task is never served from kfp's cache
    with capsys.disabled():
        print(f"\n[pipeline] local kfp run {first:.1f}s, rerun {second:.1f}s")
    assert second < first

    # a retraining run (new run root, same bucket): the base model's results come from the eval cache
    assert main([*argv[:1], "retrain", *argv[2:]]) == 0
    retrain = f"s3://{bucket}/runs/retrain"
    records = {
        uri.rsplit("/tasks/", 1)[1]: json.loads(storage.read_bytes(uri))
        for uri in storage.list(join(retrain, "evaluation", "tasks"))
    }
    assert all(r["inferred"] == 0 and r["cached"] for name, r in records.items() if name.startswith("base/"))
    assert all(r["inferred"] > 0 for name, r in records.items() if name.startswith("clip-dpo/"))
    assert storage.list(join(retrain, "evaluation", "responses", "base")) == []
    assert (
        json.loads(storage.read_bytes(join(retrain, "evaluation", "metrics.json")))["results"]["base"]
        == metrics["results"]["base"]
    )
