"""Experiment tracking: nothing without the environment; MLflow against a real SQLite store, read back with
MLflow's own client; TensorBoard event files uploaded to S3 and read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import os

import pytest

from clipdpo import tracking
from clipdpo.storage import Storage, join

ROWS = [
    {"step": 1, "loss": 0.69, "rewards/accuracy": 0.5, "note": "text", "flag": True},
    {"step": 2, "loss": 0.61, "rewards/accuracy": 0.75},
]


def _mlflow_env(tmp_path) -> dict:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_EXPERIMENT_NAME": "clipdpo-test"}


def event_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of `folder`, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(folder, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_flatten_and_numeric():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}}) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": [1, 2],
        "f": {},
    }
    assert tracking.numeric({"loss": 1, "ok": True, "name": "x", "none": None, "m": {"f1": 80.5}}) == {
        "loss": 1.0,
        "m.f1": 80.5,
    }


def test_job_env_passes_on_only_the_tracking_settings():
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "CLIPDPO_TENSORBOARD": "", "HOME": "/root"}
    assert tracking.job_env(env) == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}


def test_nothing_configured_nothing_written(tmp_path):
    tracker = tracking.open_tracker(
        str(tmp_path / "out"), storage=Storage(), local_dir=str(tmp_path / "tb"), run_name="r", env={}
    )
    assert type(tracker) is tracking.Tracker
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.close()
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()


@pytest.mark.slow  # MLflow creates its SQLite schema (~10 s on a busy CPU)
def test_mlflow_run_logged_resumed_and_continued_by_another_step(tmp_path):
    from mlflow import MlflowClient

    env = _mlflow_env(tmp_path)
    output, storage = str(tmp_path / "model"), Storage()
    tracker = tracking.open_tracker(output, storage=storage, local_dir=str(tmp_path / "tb"), run_name="train", env=env)
    tracker.log_params({"beta": 0.1, "model": {"path": "s3://m/x"}})
    tracker.log_metrics(ROWS[0], step=1)
    tracker.close("KILLED")
    # a resumed training: same output, same run (tracking.json names it), params not logged twice
    again = tracking.open_tracker(output, storage=storage, local_dir=str(tmp_path / "tb"), run_name="train", env=env)
    again.log_params({"beta": 0.1, "model": {"path": "s3://m/x"}})
    again.log_metrics(ROWS[1], step=2)
    again.log_artifacts({"model": "s3://b/run/model/model"})
    again.close()
    info = json.loads((tmp_path / "model" / tracking.TRACKING_FILE).read_text())
    # the evaluate step logs to the training's run
    tracking.log_evaluation(
        str(tmp_path / "evaluation"), output, {"clip-dpo": {"amber": {"chair": 7.5}}}, storage, env=env
    )

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("clipdpo-test").experiment_id])
    assert run.info.run_id == info["mlflow_run_id"] and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 0.69), (2, 0.61)]
    assert "note" not in run.data.metrics and "flag" not in run.data.metrics
    assert run.data.params == {"beta": "0.1", "model.path": "s3://m/x"}
    assert run.data.tags["clipdpo.model"] == "s3://b/run/model/model"
    assert run.data.tags["clipdpo.output"] == output
    assert run.data.metrics["eval.clip-dpo.amber.chair"] == 7.5
    assert run.data.tags["clipdpo.evaluation"] == str(tmp_path / "evaluation")
    assert not (tmp_path / "tb").exists()  # no TensorBoard asked for


def test_tensorboard_event_files_on_s3_hold_the_loss(tmp_path, bucket):
    output, storage = join(bucket, "run", "model"), Storage()
    tracker = tracking.open_tracker(
        output, storage=storage, local_dir=str(tmp_path / "tb"), run_name="train", env={"CLIPDPO_TENSORBOARD": "1"}
    )
    tracker.log_params({"beta": 0.1})
    for row in ROWS:
        tracker.log_metrics(row, step=row["step"])
    tracker.close()
    uploaded = storage.list(join(output, tracking.TENSORBOARD_DIR))
    assert uploaded and all(os.path.basename(uri).startswith("events.out.tfevents.") for uri in uploaded)
    fetched = tmp_path / "fetched"
    for uri in uploaded:
        storage.download_file(uri, str(fetched / os.path.basename(uri)))
    scalars = event_scalars(str(fetched))
    assert [(step, round(value, 6)) for step, value in scalars["loss"]] == [(1, 0.69), (2, 0.61)]
    assert [value for _, value in scalars["rewards/accuracy"]] == [0.5, 0.75]
    assert json.loads(storage.read_bytes(join(output, tracking.TRACKING_FILE))) == {
        "tensorboard": join(output, tracking.TENSORBOARD_DIR)
    }


def test_training_callbacks_only_when_asked_and_on_the_main_rank(tmp_path):
    from dataclasses import dataclass
    from types import SimpleNamespace

    @dataclass
    class Config:  # the fields of the train config the callback reads
        save_steps: int = 2
        beta: float = 0.1

    def run(is_main):  # what the callback reads of the train stage's TrainRun
        return SimpleNamespace(
            ctx=SimpleNamespace(is_main=is_main),
            cfg=Config(),
            storage=Storage(),
            output=str(tmp_path / "runs" / "r1" / "model"),
            checkpoints=SimpleNamespace(local_root=str(tmp_path / "scratch")),
        )

    env = {"CLIPDPO_TENSORBOARD": "1"}
    assert tracking.training_callbacks(run(True), env={}) == []
    assert tracking.training_callbacks(run(False), env=env) == []
    main = run(True)
    (callback,) = tracking.training_callbacks(main, env=env)
    for row in ROWS:
        callback.on_step_end(main, row["step"], row)
    uploaded = tmp_path / "runs" / "r1" / "model" / tracking.TENSORBOARD_DIR
    assert len(event_scalars(str(uploaded))["loss"]) == 2  # step 2 is a checkpoint step: synced already
    callback.on_train_end(main)
    assert "step" not in event_scalars(str(uploaded))
