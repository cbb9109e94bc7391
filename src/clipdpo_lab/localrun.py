"""The one in-process runner: the pipeline's step functions (`clipdpo.steps`, what the kfp components call),
run in this process on local folders or the run's S3, for experiments that need more than one pipeline run
(arms, controls, ablations, the small effect test).

Every arm of an experiment writes under `arm_root(run_root, arm)` = `<run_root>-<arm>`, reusing the run's own
artifacts where the arm does not change them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from clipdpo.stages import NAMES
from clipdpo.storage import Storage, join

TRAINED_STAGES = NAMES[: NAMES.index("train") + 1]  # evaluate runs apart: the models of every arm side by side


def arm_root(run_root: str, arm: str) -> str:
    """Where an arm run beside `run_root` writes: `<run_root>-<arm>`."""
    return run_root.rstrip("/") + "-" + arm


def model_uri(run_root: str) -> str:
    """The trained model folder of the run (or arm) at `run_root`."""
    from clipdpo import steps

    return join(steps.artifact_uri(run_root, "train"), "model")


def stage_work(configs: dict[str, dict], run_root: str, source: str) -> dict[str, Callable[[], object]]:
    """Each stage up to train as a call of its step function (generate and score: one shard, then the manifest)."""
    from clipdpo import steps

    body = {stage: json.dumps(configs[stage]) for stage in TRAINED_STAGES}
    return {
        "ingest": lambda: steps.ingest_step(run_root, source, body["ingest"]),
        "generate": lambda: [
            steps.generate_step(run_root, body["generate"], 0, 1, finalize=last) for last in (False, True)
        ],
        "score": lambda: [steps.score_step(run_root, body["score"], 0, 1, finalize=last) for last in (False, True)],
        "filter": lambda: steps.filter_step(run_root, body["filter"]),
        "train": lambda: steps.train_step(run_root, body["train"], launcher="local"),
    }


def timed(work: dict[str, Callable[[], object]], say=print) -> dict[str, float]:
    """Run each piece of `work` in order; seconds per piece."""
    seconds = {}
    for name, run in work.items():
        started = time.monotonic()
        run()
        seconds[name] = round(time.monotonic() - started, 1)
        say(f"  {name}: {seconds[name]:.0f}s")
    return seconds


def run_stages(configs: dict[str, dict], run_root: str, source: str, say=print) -> dict[str, float]:
    """ingest -> generate -> score -> filter -> train under `run_root`; seconds per stage."""
    return timed(stage_work(configs, run_root, source), say)


def control_arm(configs: dict[str, dict], train: dict, run_root: str, seed: int = 0, say=print) -> str:
    """The shuffled-score control beside `run_root`: its CLIP scores shuffled within each image, then the same
    filter and `train`, under `<run_root>-control`; returns the train step's output."""
    from clipdpo import steps
    from clipdpo_lab.control import write_shuffled

    control = arm_root(run_root, "control")
    say(f"control arm (CLIP scores shuffled within each image) under {control}: scores ...")
    write_shuffled(steps.artifact_uri(run_root, "score"), steps.artifact_uri(control, "score"), seed=seed)
    say("control arm: filter ...")
    steps.filter_step(control, json.dumps(configs["filter"]))
    say("control arm: train ...")
    return steps.train_step(control, json.dumps(train), launcher="local")


def evaluate(run_root: str, evaluate_config: dict, models: list[dict], train_config: dict) -> dict:
    """The evaluate step under `run_root` with `models` (responses already made are reused); its metrics.json."""
    from clipdpo import steps

    config = {**evaluate_config, "models": models}
    steps.evaluate_step(run_root, steps.artifact_uri(run_root, "train"), json.dumps(train_config), json.dumps(config))
    return json.loads(Storage().read_bytes(join(steps.artifact_uri(run_root, "evaluate"), "metrics.json")))


def hf_model(name: str, path: str) -> dict:
    """An evaluate model entry on the hf engine in float32 (what the world's models run on)."""
    return {"name": name, "path": path, "engine": "hf", "dtype": "float32"}
