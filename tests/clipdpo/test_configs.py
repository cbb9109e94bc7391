"""The shipped cluster configs load into their stages' config classes (typos fail here, not on a cluster)."""

from __future__ import annotations

import json
import os

import pytest

from clipdpo import config as config_lib
from clipdpo.stages import NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_class(stage: str):
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.filter import FilterConfig
    from clipdpo.generate import GenerateConfig
    from clipdpo.ingest import IngestConfig
    from clipdpo.score.scorer import ScorerConfig
    from clipdpo.train.config import TrainConfig

    return {
        "ingest": IngestConfig,
        "generate": GenerateConfig,
        "score": ScorerConfig,
        "filter": FilterConfig,
        "train": TrainConfig,
        "evaluate": EvaluateConfig,
    }[stage]


@pytest.mark.parametrize("stage", NAMES)
def test_cluster_config_loads(stage):
    path = os.path.join(ROOT, "configs", "cluster", f"{stage}.json")
    data = json.load(open(path))
    if stage == "evaluate":  # the pipeline step fills in the run's base and trained model (on `engine`)
        data["models"] = [{"name": "base", "path": "llava-hf/llava-1.5-7b-hf"}]
    config_lib.from_dict(config_class(stage), data, where=path)


def test_evaluate_cli_takes_the_shipped_config_with_its_engine_key(capsys):
    """configs/cluster/evaluate.json names `engine` (the pipeline's derived models run on it): the evaluate
    entry point accepts the file as it is (it once refused the key)."""
    from clipdpo.evaluate.__main__ import main

    path = os.path.join(ROOT, "configs", "cluster", "evaluate.json")
    models = '[{"name": "base", "path": "llava-hf/llava-1.5-7b-hf"}]'
    assert main(["--config", path, "--set", f"models={models}", "--output", "/tmp/unused", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "vllm"
    assert (
        main(
            [
                "--config",
                path,
                "--set",
                "engine=tgi",
                "--set",
                f"models={models}",
                "--output",
                "/tmp/unused",
                "--dry-run",
            ]
        )
        == 2
    )  # a wrong engine is still a clear error
    assert "engine: 'tgi'; expected one of ['hf', 'vllm']" in capsys.readouterr().err


def test_the_pipeline_step_derives_its_models_on_the_configs_engine(tmp_path):
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.steps import evaluate_settings

    model = str(tmp_path / "model")
    config = evaluate_settings(
        str(tmp_path),
        model,
        json.dumps({"model": "org/base"}),
        json.dumps({"engine": "hf", "amber": {"root": "s3://b/amber"}}),
    )
    assert [(m["name"], m["path"], m["engine"]) for m in config["models"]] == [
        ("base", "org/base", "hf"),
        ("clip-dpo", os.path.join(model, "model"), "hf"),
    ]
    assert config_lib.from_dict(EvaluateConfig, config, "evaluate_config").engine == "hf"


def test_a_typo_is_an_error_naming_the_key():
    with pytest.raises(config_lib.ConfigError, match="learning_rte"):
        config_lib.from_dict(config_class("train"), {"learning_rte": 1e-6})


def test_result_keys_leave_out_exactly_the_fields_marked_so():
    """A cache key or an output fingerprint takes every config field but those marked NOT_IN_KEY at their
    definition: a new field is in every key unless it says otherwise (no deny-list to forget)."""
    import dataclasses

    from clipdpo.config import key_dict
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.train.config import TrainConfig
    from clipdpo.train.recipe import semantic_config

    cfg = TrainConfig()
    marked = {f.name for f in dataclasses.fields(cfg) if not f.metadata.get("in_key", True)}
    assert marked == {
        "forward",
        "save_steps",
        "keep_checkpoints",
        "log_steps",
        "reference_cache",
        "image_feature_cache_mb",
        "collective_timeout_minutes",  # how long a collective may wait decides nothing trained
    }
    assert set(key_dict(cfg)) == {f.name for f in dataclasses.fields(cfg)} - marked
    # only what is marked leaves the fingerprint: changing it keeps the same one, changing anything else not
    assert semantic_config(dataclasses.replace(cfg, save_steps=7, forward="concatenated")) == semantic_config(cfg)
    assert semantic_config(dataclasses.replace(cfg, beta=0.3)) != semantic_config(cfg)
    from clipdpo.config import from_dict

    evaluate = from_dict(
        EvaluateConfig,
        {"models": [{"name": "base", "path": "m", "engine": "hf"}], "suite": [{"kind": "pope", "root": "p"}]},
    )
    assert "batch_size" not in key_dict(evaluate) and "max_new_tokens" in key_dict(evaluate)
