"""Run the pipeline's stages on a built world in this process (clipdpo_lab.localrun) and read back base vs
trained metrics: for measurements (`python -m clipdpo_lab measure`) and the slow tests; `make pipeline-run`
runs the kfp pipeline itself with the world's configs."""

from __future__ import annotations

import time

from clipdpo_lab import localrun
from clipdpo_world.build import WorldPaths


def run_stages(paths: WorldPaths, run_root: str, overrides: dict[str, dict] | None = None, say=print) -> dict:
    """Every stage on the world (configs from `paths.configs`, `overrides` merged per stage); returns the
    evaluation's metrics.json (`results.<model>.amber...`) plus the stages' times."""
    configs = {stage: {**body, **(overrides or {}).get(stage, {})} for stage, body in paths.configs.items()}
    seconds = localrun.run_stages(configs, run_root, paths.images, say)
    started = time.monotonic()
    models = [localrun.hf_model("base", paths.lvlm), localrun.hf_model("clipdpo", localrun.model_uri(run_root))]
    metrics = localrun.evaluate(run_root, configs["evaluate"], models, configs["train"])
    seconds["evaluate"] = round(time.monotonic() - started, 1)
    say(f"  evaluate: {seconds['evaluate']:.0f}s")
    return {"metrics": metrics, "seconds": seconds}


def summary(metrics: dict) -> dict[str, dict]:
    """model -> the headline numbers (CHAIR, Hal, Cover, Cog, F1, AMBER score)."""
    out = {}
    for name, result in metrics["results"].items():
        amber = result.get("amber", {})
        generative = amber.get("generative", {})
        out[name] = {
            "chair": generative.get("chair"),
            "hal": generative.get("hal"),
            "cover": generative.get("cover"),
            "cog": generative.get("cog"),
            "f1": amber.get("discriminative", {}).get("f1"),
            "amber_score": amber.get("amber_score"),
        }
    return out


def run_control(paths: WorldPaths, run_root: str, seed: int = 0) -> dict:
    """The control arm on `run_root`'s scores (localrun.control_arm), evaluated base vs "control" under
    `<run_root>-control`; returns its metrics.json."""
    control = localrun.arm_root(run_root, "control")
    localrun.control_arm(paths.configs, paths.configs["train"], run_root, seed=seed, say=lambda line: None)
    models = [localrun.hf_model("base", paths.lvlm), localrun.hf_model("control", localrun.model_uri(control))]
    return localrun.evaluate(control, paths.configs["evaluate"], models, paths.configs["train"])


def sampled_metrics(model_dir: str, scenes: list, samples: int = 3) -> dict:
    """Exact CHAIR/Hal/Cover of sampled captions (temperature 1.0, `samples` per image), mean over samples:
    steadier than greedy on a few hundred images."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from clipdpo_world import lvlm, metrics

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    runs = [
        metrics.caption_metrics(scenes, lvlm.describe(model, processor, scenes, temperature=1.0, seed=seed))
        for seed in range(samples)
    ]
    return {key: round(sum(getattr(r, key) for r in runs) / samples, 2) for key in ("chair", "hal", "cover")}
