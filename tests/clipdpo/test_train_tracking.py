"""A short training (the train stage's CLI, a tiny LLaVA) with MLflow and TensorBoard asked for by the
environment: MLflow's own client reads back the logged params and per-step metrics, TensorBoard's own
reader finds the loss in the event file uploaded to S3; both equal the run's metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pairs_fixture import write_pairs
from test_tracking import event_scalars

from clipdpo.demo.models import build_tiny_llava
from clipdpo.storage import Storage, join

pytestmark = pytest.mark.slow  # a training process (~20-40 s on a busy CPU)


def test_training_logs_to_mlflow_and_tensorboard(bucket, tmp_path):
    from mlflow import MlflowClient

    model = build_tiny_llava(str(tmp_path / "tiny-llava"))
    pairs = write_pairs(join(bucket, "data"), n_pairs=8, n_shards=1)
    output = join(bucket, "run", "model")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = {
        "model": model,
        "learning_rate": 5e-3,
        "global_batch_size": 4,
        "per_device_batch_size": 2,
        "max_length": 64,
        "warmup_ratio": 0.0,
        "epochs": 2,
        "save_steps": 2,
        "seed": 7,
    }
    argv = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": "train-test",
        "CLIPDPO_TENSORBOARD": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "clipdpo.train", "--input", pairs, "--output", output, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    storage = Storage()
    rows = [json.loads(line) for line in storage.read_bytes(join(output, "metrics.jsonl")).decode().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]

    info = json.loads(storage.read_bytes(join(output, "tracking.json")))
    client = MlflowClient(tracking_uri)
    run = client.get_run(info["mlflow_run_id"])
    assert (
        run.info.status == "FINISHED"
        and run.info.experiment_id == client.get_experiment_by_name("train-test").experiment_id
    )
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (row["step"], pytest.approx(row["loss"])) for row in rows
    ]
    assert len(client.get_metric_history(run.info.run_id, "rewards/margin")) == 4
    assert run.data.params["beta"] == "0.1" and run.data.params["global_batch_size"] == "4"
    assert run.data.tags["clipdpo.model"] == join(output, "model")

    assert info["tensorboard"] == join(output, "tensorboard")
    fetched = tmp_path / "tensorboard"
    for uri in storage.list(info["tensorboard"]):
        storage.download_file(uri, str(fetched / uri.rsplit("/", 1)[1]))
    # float32 in the event file: equal to the float64 row within float32 rounding (relative 2**-24)
    assert [(step, pytest.approx(value, rel=1e-6)) for step, value in event_scalars(str(fetched))["loss"]] == [
        (row["step"], row["loss"]) for row in rows
    ]
