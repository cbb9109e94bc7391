"""The demo's stage configs: every stage pointed at the tiny models and the demo benchmarks.

`make pipeline-run` with no KFP_HOST runs the kfp pipeline (pipelines/clipdpo_pipeline.py) on
this machine with these configs (see pipelines/run.py). The tiny models are random, so the
filter thresholds are relaxed to suit their scores and training uses a tiny batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipdpo.demo import benchmarks, models

# Random tiny CLIP scores sit near 0: the paper's thresholds (28/25) would drop everything.
DEMO_FILTER = {
    "caption_min_score": -100.0,
    "question_min_score": -100.0,
    "qa_caption_min_score": -100.0,
    "pair_min_margin": 0.5,
    "pair_min_length_ratio": 0.5,
}


def demo_configs(models_dir: Path) -> dict[str, dict]:
    from clipdpo.evaluate.nlp import local_spacy_model

    paths = models.build_all(str(models_dir))
    evaluations = benchmarks.write(str(models_dir.parent / "benchmarks"))
    evaluations["amber"]["nlp"] = {"backend": "spacy", "spacy_model": local_spacy_model()}
    evaluations["zero_shot"]["text_encoder"] = {
        "model_name": models.TINY_CLIP_NAME,
        "pretrained": None,
        "model_config_dir": paths["clip_config_dir"],
    }
    return {
        "ingest": {"source": "builtin:demo", "source_name": "skimage", "shard_size": 4},
        "generate": {
            "captioners": [{"name": "tiny-llava", "path": paths["captioner"], "engine": "hf"}],
            "sampling": {"max_new_tokens": 24},
            "qa": {
                "model": {"name": "tiny-llm", "path": paths["llm"], "engine": "hf"},
                "sampling": {"max_new_tokens": 48},
            },
        },
        "score": {
            "model_name": models.TINY_CLIP_NAME,
            "pretrained": None,
            "model_config_dir": paths["clip_config_dir"],
        },
        "filter": DEMO_FILTER,
        # The paper's optimiser settings, scaled to a handful of pairs and a tiny model.
        "train": {
            "model": paths["captioner"],
            "global_batch_size": 4,
            "per_device_batch_size": 2,
            "learning_rate": 1e-4,
            "max_length": 128,
            "epochs": 2,
            "save_steps": 1000,
        },
        # base (the tiny captioner) vs its trained copy on the demo benchmarks (clipdpo.demo.benchmarks)
        "evaluate": {"engine": "hf", "max_new_tokens": 48, **evaluations},
    }


def write_demo_configs(config_dir: Path, models_dir: Path) -> dict[str, dict]:
    configs = demo_configs(models_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    for stage, body in configs.items():
        (config_dir / f"{stage}.json").write_text(json.dumps(body, indent=2))
    return configs
