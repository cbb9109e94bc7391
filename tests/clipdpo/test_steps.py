"""The pipeline steps: a config parameter becomes the stage's typed config in one step, and the
training job (the one process boundary) gets it as one file on S3 that its CLI reads back."""

from __future__ import annotations

import json

import pytest

from clipdpo import steps
from clipdpo.config import ConfigError
from clipdpo.stage import ShardSpec, build_parser, load_config
from clipdpo.stages import IMAGES, NAMES, STAGES, stage
from clipdpo.storage import Storage
from clipdpo.train.config import TrainConfig


def test_train_job_reads_the_config_the_step_wrote(bucket, monkeypatch):
    launched = {}
    monkeypatch.setattr(
        steps,
        "launch_train_job",
        lambda args, key, launcher, job: launched.update(args=args, key=key, launcher=launcher, job=job),
    )
    root = f"{bucket}/runs/r1"
    parameter = json.dumps({"beta": 0.2, "learning_rate": 1e-6})
    assert steps.train_step(root, parameter, launcher="pytorchjob", image="img:1", nodes=2) == f"{root}/model"
    args = launched["args"]
    # --overwrite: a step kfp reruns (its pairs or config changed) replaces the run's model
    assert args == [
        "--input",
        f"{root}/pairs",
        "--output",
        f"{root}/model",
        "--config",
        f"{root}/configs/train.json",
        "--overwrite",
    ]
    assert launched["launcher"] == "pytorchjob" and launched["job"] == {"image": "img:1", "nodes": 2}
    # what `python -m clipdpo.train` does with those flags: the same config, no second encoding
    parsed = build_parser("python -m clipdpo.train", None, "pairs", sharded=False).parse_args(args)
    assert load_config(TrainConfig, parsed) == TrainConfig(beta=0.2, learning_rate=1e-6)
    # a restarted step with the same output and config asks for the same job
    again = {}
    monkeypatch.setattr(steps, "launch_train_job", lambda args, key, launcher, job: again.update(key=key))
    steps.train_step(root, json.dumps({"learning_rate": 1e-6, "beta": 0.2}), launcher="pytorchjob", image="i")
    assert again["key"] == launched["key"]


def test_bad_config_parameters_fail_before_any_work(bucket):
    root = f"{bucket}/runs/r2"
    with pytest.raises(ConfigError, match=r"filter_config: unknown key\(s\) \['caption_min_scor'\]"):
        steps.filter_step(root, json.dumps({"caption_min_scor": 1}))
    with pytest.raises(ConfigError, match="train_config: must be a JSON object, got list"):
        steps.train_step(root, "[1]", launcher="local")
    with pytest.raises(ConfigError, match="generate_config: not valid JSON"):
        steps.generate_step(root, "{captioners:")
    with pytest.raises(ValueError, match="launcher 'slurm'"):
        steps.train_step(root, "{}", launcher="slurm")
    assert not Storage().exists(f"{root}/configs/train.json")


def test_the_stage_list_drives_uris_and_images():
    assert NAMES == ("ingest", "generate", "score", "filter", "train", "evaluate")
    assert steps.artifact_uri("s3://b/r", "filter") == "s3://b/r/pairs"
    assert steps.input_uri("s3://b/r", "filter") == "s3://b/r/scores"
    assert [s.input for s in STAGES[1:]] == list(NAMES[:-1])  # each stage reads the one before
    assert IMAGES == ("filter", "generate", "score", "train", "evaluate")  # ingest runs in the filter image
    with pytest.raises(ValueError, match="unknown stage 'rank'"):
        stage("rank")


def test_shard_spec_is_checked_however_it_is_made():
    assert ShardSpec.parse("1/4") == ShardSpec(1, 4)
    assert ShardSpec(1, 4).select(["a", "b", "c", "d", "e", "f"]) == ["b", "f"]
    with pytest.raises(ValueError, match="need 0 <= i < n"):
        ShardSpec(4, 4)
