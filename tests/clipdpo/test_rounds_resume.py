"""A run of several rounds stopped inside round 2's training and run again (the round steps of clipdpo.steps, as
the local pipeline's components call them, on a tiny LLaVA and 16 pairs): round 1 is not trained again, round 2
resumes from its last checkpoint, and its model is bit-identical to an uninterrupted round 2's.

The whole pipeline through kfp's local runner, stopped by SIGTERM and run again, costs minutes on the demo: that is
`benchmarks/bench_rounds.py` (`make bench`). kfp's cache serving the steps before the stopped one is what a rerun
of any local run relies on (tests/pipelines/test_pipeline_local.py); here, what a round adds: its train step
restarts from round 1's model, which is also its DPO reference, and resumes rather than training afresh."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
from pairs_fixture import write_pairs
from train_runs import assert_bit_identical_training, metrics, tiny_train_settings

from clipdpo import outputref, steps
from clipdpo.demo.models import build_tiny_llava
from clipdpo.storage import Storage, join

ENTRY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "round_step_entry.py")
STOP_AFTER = 2  # of round 2's 4 optimizer steps (16 pairs / 8 x 2 epochs), each checkpointed


def train_config(model: str) -> str:
    return json.dumps(tiny_train_settings(model, epochs=2))


def round_two(run_root: str, round_one: str, config: str) -> tuple[str, str]:
    """Round 2's root and train config (round_start_step) from round 1's versioned train output."""
    return steps.round_start_step(run_root, 2, outputref.ref(Storage(), round_one), config)


def summary(output: str) -> dict:
    return json.loads(Storage().read_bytes(join(output, "train_summary.json")))


@pytest.mark.slow(seconds=40)  # four tiny trainings and a stopped one: 39 s of CPU, measured on a busy machine
def test_a_run_stopped_in_round_twos_training_resumes_there_and_ends_as_an_uninterrupted_one(tmp_path, caplog):
    model = build_tiny_llava(str(tmp_path / "tiny-llava"))
    config = train_config(model)
    pairs_1 = write_pairs(str(tmp_path / "data-1"), n_pairs=16, n_shards=1)
    pairs_2 = write_pairs(str(tmp_path / "data-2"), n_pairs=16, n_shards=2)
    stopped, uninterrupted = str(tmp_path / "stopped"), str(tmp_path / "uninterrupted")

    # the run: round 1 trains; round 2 starts from its model and is stopped after step 2
    round_one = outputref.plain(steps.train_step(stopped, config, launcher="local", pairs_uri=pairs_1))
    first = summary(round_one)
    root, round_config = round_two(stopped, round_one, config)
    assert json.loads(round_config)["model"] == join(round_one, "model")  # and the DPO reference
    killed = subprocess.run(
        [sys.executable, ENTRY, str(STOP_AFTER), root, round_config, pairs_2],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    round_two_model = steps.artifact_uri(root, "train")
    assert not os.path.exists(join(round_two_model, "train_summary.json"))  # stopped inside its training
    assert os.path.exists(join(round_two_model, "checkpoints", f"step-{STOP_AFTER:08d}", "COMPLETE"))

    # round 2 uninterrupted, from the same round 1 model (round_start_step reads the model it is given)
    other_root, other_config = round_two(uninterrupted, round_one, config)
    assert other_config == round_config
    steps.train_step(other_root, other_config, launcher="local", pairs_uri=pairs_2)

    # the run again, as its rerun calls the steps: round 1 is already trained, round 2 resumes at its checkpoint
    caplog.set_level(logging.INFO, logger="clipdpo.train")
    assert outputref.plain(steps.train_step(stopped, config, launcher="local", pairs_uri=pairs_1)) == round_one
    assert summary(round_one) == first  # not trained again: the stored summary, its seconds included
    assert round_two(stopped, round_one, config) == (root, round_config)
    steps.train_step(root, round_config, launcher="local", pairs_uri=pairs_2)
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert resumed == [f"resumed from {join(round_two_model, 'checkpoints', f'step-{STOP_AFTER:08d}')} (step 2)"]
    assert [row["step"] for row in metrics(Storage(), round_two_model)] == [1, 2, 3, 4]
    assert_bit_identical_training(round_two_model, steps.artifact_uri(other_root, "train"))
    # round 2 trained on from round 1's model, not from the base model
    assert summary(round_two_model)["config"]["model"] == join(round_one, "model") != model
