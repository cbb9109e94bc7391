"""The local run on the synthetic world (`python -m pipelines.run --world SEED [--control shuffled]`).

`world_configs` builds (or reuses from the cache) the world of that seed and returns its stage
configs, with the evaluate stage naming the models `base` (the world LVLM) and `clipdpo` (the run's
trained model), so the report and metrics.json key results by those names (issue 17).

`run_control_arm` is the shuffled-score control: it runs in this process after the kfp pipeline,
through the same step functions the components call. The run's CLIP scores are shuffled among each
image's captions (`clipdpo.world.control`), then filter and train run with the run's own configs
under `<run_root>-control`; the evaluate step then reruns on the run's own evaluation folder with
base, clipdpo and control, reusing the responses already there (they are resumable), so one
report holds all three side by side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from clipdpo.storage import join

CONTROLS = ("shuffled",)


def evaluate_models(base: str, run_root: str, control: bool = False) -> list[dict]:
    """The models the world report compares: base, clipdpo (and control), on the hf engine in float32."""
    from clipdpo.steps import artifact_uri

    roots = {"clipdpo": run_root} | ({"control": control_root(run_root)} if control else {})
    models = [{"name": "base", "path": base, "engine": "hf", "dtype": "float32"}]
    models += [{"name": name, "path": join(artifact_uri(root, "train"), "model"), "engine": "hf", "dtype": "float32"}
               for name, root in roots.items()]
    return models


def control_root(run_root: str) -> str:
    return run_root.rstrip("/") + "-control"


def world_configs(seed: int, cache_dir: str, run_root: str, say=print) -> tuple[dict[str, dict], object]:
    """The stage configs of world `seed` (built once into `cache_dir`) for a pipeline run under `run_root`."""
    # One torch thread: with two threads and a busy second core training ran ~10x slower (issue 17, trap 4).
    # Set before torch loads; the components (subprocesses) inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from clipdpo.world.build import WorldConfig, build

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    spacy_model = os.environ.get("CLIPDPO_SPACY_MODEL")
    say(f"world {seed}: building or reusing it under {cache_dir} (a first build takes several minutes) ...")
    paths = build(WorldConfig(seed=seed), cache_dir, spacy_model=str(Path(spacy_model).resolve()) if spacy_model
                  else None, say=lambda line: print(line, flush=True))
    configs = {stage: dict(body) for stage, body in paths.configs.items()}
    configs["evaluate"]["models"] = evaluate_models(paths.lvlm, run_root)
    say(f"world {seed}: {paths.root} (checks: {json.dumps(paths.checks)})")
    return configs, paths


def run_control_arm(configs: dict[str, dict], base: str, run_root: str, seed: int = 0, say=print) -> dict:
    """Shuffled scores -> filter -> train under `<run_root>-control`, then evaluate base, clipdpo and control
    into the run's own evaluation folder; returns that metrics.json."""
    from clipdpo import steps
    from clipdpo.storage import Storage
    from clipdpo.world.control import write_shuffled

    control = control_root(run_root)
    say(f"control arm (CLIP scores shuffled within each image) under {control}: scores ...")
    write_shuffled(steps.artifact_uri(run_root, "score"), steps.artifact_uri(control, "score"), seed=seed)
    say("control arm: filter ...")
    steps.filter_step(control, json.dumps(configs["filter"]))
    say("control arm: train ...")
    train = json.dumps(configs["train"])
    steps.train_step(control, train, launcher="local")
    say("control arm: evaluate (base and clipdpo responses reused) ...")
    evaluate = {**configs["evaluate"], "models": evaluate_models(base, run_root, control=True)}
    steps.evaluate_step(run_root, steps.artifact_uri(run_root, "train"), train, json.dumps(evaluate))
    return json.loads(Storage().read_bytes(join(steps.artifact_uri(run_root, "evaluate"), "metrics.json")))


def headline(metrics: dict) -> str:
    """The report's headline numbers per model (AMBER CHAIR, Hal, Cover, discriminative F1, AMBER score)."""
    from clipdpo.world.effect import summary

    rows = ["  model     CHAIR    Hal  Cover     F1  AMBER"]
    for name, row in summary(metrics).items():
        cells = [row[key] for key in ("chair", "hal", "cover", "f1", "amber_score")]
        rows.append(f"  {name:<8}" + "".join(f"{'-' if v is None else f'{v:.1f}':>7}" for v in cells))
    return "\n".join(rows)
