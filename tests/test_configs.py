"""The shipped cluster configs load into their stages' config classes (typos fail here, not on a cluster)."""

from __future__ import annotations

import json
import os

import pytest

from clipdpo import config as config_lib
from clipdpo.stages import NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_class(stage: str):
    from clipdpo.filter import FilterConfig
    from clipdpo.generate import GenerateConfig
    from clipdpo.ingest import IngestConfig
    from clipdpo.score.scorer import ScorerConfig
    from clipdpo.evaluate.config import EvaluateConfig
    from clipdpo.train.config import TrainConfig

    return {"ingest": IngestConfig, "generate": GenerateConfig, "score": ScorerConfig, "filter": FilterConfig,
            "train": TrainConfig, "evaluate": EvaluateConfig}[stage]


@pytest.mark.parametrize("stage", NAMES)
def test_cluster_config_loads(stage):
    path = os.path.join(ROOT, "configs", "cluster", f"{stage}.json")
    data = json.load(open(path))
    if stage == "evaluate":  # the pipeline step takes `engine` and fills in the run's base and trained model
        assert data.pop("engine") in ("vllm", "hf")
        data["models"] = [{"name": "base", "path": "llava-hf/llava-1.5-7b-hf"}]
    config_lib.from_dict(config_class(stage), data, where=path)


def test_a_typo_is_an_error_naming_the_key():
    with pytest.raises(config_lib.ConfigError, match="learning_rte"):
        config_lib.from_dict(config_class("train"), {"learning_rte": 1e-6})
