"""Run the pipeline's stages on a built world, in this process, and read back base vs trained metrics.

The same step functions the kfp components call (`clipdpo.steps`), on local folders instead of S3:
ingest -> generate -> score -> filter -> train -> evaluate. For measurements and the slow test;
`make pipeline-run` runs the kfp pipeline itself with `WorldPaths.configs`.
"""

from __future__ import annotations

import json
import time

from clipdpo.stages import NAMES
from clipdpo.storage import Storage, join
from clipdpo.world.build import WorldPaths

STAGES = NAMES[: NAMES.index("train") + 1]  # evaluate runs apart: base and trained model side by side


def run_stages(paths: WorldPaths, run_root: str, overrides: dict[str, dict] | None = None, say=print) -> dict:
    """Every stage on the world (configs from `paths.configs`, `overrides` merged per stage); returns the
    evaluation's metrics.json (`results.<model>.amber...`) plus the stages' times and the pair count."""
    from clipdpo import steps

    configs = {stage: {**body, **(overrides or {}).get(stage, {})} for stage, body in paths.configs.items()}
    config_json = {stage: json.dumps(body) for stage, body in configs.items()}
    work = {
        "ingest": lambda: steps.ingest_step(run_root, paths.images, config_json["ingest"]),
        "generate": lambda: [steps.generate_step(run_root, config_json["generate"], 0, 1, finalize=last)
                             for last in (False, True)],  # one shard, then the manifest
        "score": lambda: [steps.score_step(run_root, config_json["score"], 0, 1, finalize=last)
                          for last in (False, True)],
        "filter": lambda: steps.filter_step(run_root, config_json["filter"]),
        "train": lambda: steps.train_step(run_root, config_json["train"], launcher="local"),
    }
    seconds = {}
    for stage in STAGES:
        started = time.monotonic()
        work[stage]()
        seconds[stage] = round(time.monotonic() - started, 1)
        say(f"  {stage}: {seconds[stage]:.0f}s")
    started = time.monotonic()
    evaluate = {**configs["evaluate"], "models": [
        {"name": "base", "path": paths.lvlm, "engine": "hf", "dtype": "float32"},
        {"name": "clipdpo", "path": join(steps.artifact_uri(run_root, "train"), "model"), "engine": "hf",
         "dtype": "float32"}]}
    steps.evaluate_step(run_root, steps.artifact_uri(run_root, "train"), config_json["train"], json.dumps(evaluate))
    seconds["evaluate"] = round(time.monotonic() - started, 1)
    say(f"  evaluate: {seconds['evaluate']:.0f}s")
    metrics = json.loads(Storage().read_bytes(join(steps.artifact_uri(run_root, "evaluate"), "metrics.json")))
    return {"metrics": metrics, "seconds": seconds}


def summary(metrics: dict) -> dict[str, dict]:
    """model -> the numbers the issue asks about (CHAIR, Hal, Cover, Cog, F1, AMBER score, POPE, zero-shot)."""
    out = {}
    for name, result in metrics["results"].items():
        amber = result.get("amber", {})
        generative = amber.get("generative", {})
        out[name] = {"chair": generative.get("chair"), "hal": generative.get("hal"), "cover": generative.get("cover"),
                     "cog": generative.get("cog"), "f1": amber.get("discriminative", {}).get("f1"),
                     "amber_score": amber.get("amber_score")}
    return out


def run_control(paths: WorldPaths, run_root: str, seed: int = 0) -> dict:
    """The control arm on `run_root`'s scores: shuffled within each image, then filter, train, evaluate
    (base vs "control") under `<run_root>-control`; returns its metrics.json."""
    from clipdpo import steps
    from clipdpo.world.control import write_shuffled

    control = run_root.rstrip("/") + "-control"
    write_shuffled(steps.artifact_uri(run_root, "score"), steps.artifact_uri(control, "score"), seed=seed)
    train = json.dumps(paths.configs["train"])
    steps.filter_step(control, json.dumps(paths.configs["filter"]))
    steps.train_step(control, train, launcher="local")
    evaluate = {**paths.configs["evaluate"], "models": [
        {"name": "base", "path": paths.lvlm, "engine": "hf", "dtype": "float32"},
        {"name": "control", "path": join(steps.artifact_uri(control, "train"), "model"), "engine": "hf",
         "dtype": "float32"}]}
    steps.evaluate_step(control, steps.artifact_uri(control, "train"), train, json.dumps(evaluate))
    return json.loads(Storage().read_bytes(join(steps.artifact_uri(control, "evaluate"), "metrics.json")))


def sampled_metrics(model_dir: str, scenes: list, samples: int = 3) -> dict:
    """Exact CHAIR/Hal/Cover of sampled captions (temperature 1.0, `samples` per image), mean over samples:
    steadier than greedy on a few hundred images (issue 17, trap 3)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from clipdpo.world import lvlm, metrics

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    runs = [metrics.caption_metrics(scenes, lvlm.describe(model, processor, scenes, temperature=1.0, seed=seed))
            for seed in range(samples)]
    return {key: round(sum(getattr(r, key) for r in runs) / samples, 2) for key in ("chair", "hal", "cover")}
