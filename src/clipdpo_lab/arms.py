"""The arms of a world run (`python -m clipdpo_lab run --world SEED [--method M] [--arms A,B]
[--control shuffled]`).

`world_configs` builds (or reuses from the cache) the world of that seed and returns its stage
configs, with the evaluate stage naming the models `base` (the world LVLM) and the run's trained model
by its method (`clipdpo`, `povid` or `both`), so the report and metrics.json key results by those names.

The kfp pipeline trains one method per run (its train config's `method` chooses the pairs train
consumes). Other arms run in this process after the pipeline, through the same step functions the
components call (clipdpo_lab.localrun), each under `<run_root>-<arm>` and reusing the pipeline's images, scores and
CLIP-DPO
pairs: `povid` and `both` make POVID's pairs (the world's rule-based injector) and train with POVID's
two stages; `control` shuffles the run's CLIP scores among each image's captions
(`clipdpo_lab.control`), then filters and trains as CLIP-DPO. The evaluate step then reruns on the
run's own evaluation folder with every model, reusing the responses already there (they are
resumable), so one report holds all arms side by side; a rerun reuses every finished arm.

The run's `--set` overrides reach the arms as they reach the pipeline: the configs given here carry the
train, povid, filter and evaluate values, each arm's train config takes the `train.` items on top of its
method's settings (`arm_train_config`), and ingest, generate and score come from the pipeline's artifacts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdpo_lab.localrun import arm_root, control_arm, evaluate, hf_model, model_uri

if TYPE_CHECKING:  # the world build imports torch: loaded where a world is built
    from clipdpo_world.build import WorldPaths

CONTROLS = ("shuffled",)
METHODS = ("clipdpo", "povid", "both")  # what the kfp pipeline's train consumes (the train config's method)
# Ablation arms: a method with some train settings changed. povid_text is POVID's Table 3 "text disprefer" row:
# the same two stages and epochs with beta_2 = 0, so stage 2 has no noisy-image term (against `povid`, the
# noisy-image rejections' share of the effect).
ABLATIONS = {"povid_text": ("povid", ["povid.beta_2=0.0"])}  # `--set`-style items on the method's train config
ARMS = (*METHODS, *ABLATIONS, "control")  # the models a world report can compare with base
# The lab's configs dict holds, beside the stage configs, the CLIP-DPO arm's train config ("world_train", which
# every arm's derives from) and the run's `--set train.KEY=VALUE` items (TRAIN_OVERRIDES), which every arm's train
# config takes on top of its method's, as the pipeline's own train config does. Neither reaches the product.
TRAIN_OVERRIDES = "train_overrides"


def control_root(run_root: str) -> str:
    return arm_root(run_root, "control")


def evaluate_models(
    base: str, run_root: str, control: bool = False, method: str = "clipdpo", arms: tuple[str, ...] = ()
) -> list[dict]:
    """The models the world report compares, on the hf engine in float32: base, the pipeline's trained model
    (named by its method), then each arm run after it (and the control)."""
    extra = [arm for arm in arms if arm != method] + (["control"] if control and "control" not in arms else [])
    roots = {method: run_root} | {arm: arm_root(run_root, arm) for arm in extra}
    return [hf_model("base", base)] + [hf_model(name, model_uri(root)) for name, root in roots.items()]


def print_now(line: str) -> None:
    print(line, flush=True)


def stage_writer(cache_dir: str, scene: dict) -> None:
    """The writer's process: it ends with its parent (a run stopped by a signal leaves no writer training on);
    `qawriter_build.stage` of worlds with scene config `scene`."""
    import ctypes
    import signal

    from clipdpo_world import qawriter_build

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: it still ends when the run exits normally (daemon)
        pass
    qawriter_build.stage(cache_dir, scene, say=print_now)


def writer_beside(cfg, cache_dir: str):
    """Start training the world's QA writer in another process while the world builds (it reads only the world's
    scenes; each takes one core), or None when the world is built already (`ensure` then finds or trains it)."""
    import multiprocessing

    from clipdpo_world.build import WORLD_FILE, folder_name

    if (Path(cache_dir) / folder_name(cfg) / WORLD_FILE).exists():
        return None
    process = multiprocessing.get_context("spawn").Process(
        target=stage_writer,
        args=(cache_dir, asdict(cfg.scene)),
        daemon=True,  # ended with this run
    )
    process.start()
    return process


def world_configs(
    seed: int,
    cache_dir: str,
    run_root: str,
    say=print,
    method: str = "clipdpo",
    qa: bool = False,
    judge: str = "clip",
) -> tuple[dict[str, Any], WorldPaths]:
    """The stage configs of world `seed` (built once into `cache_dir`) for a pipeline run under `run_root`
    training with `method` (the POVID source's config under "povid"); `qa`: generate writes QA rows with the
    world's QA writer (trained once for every world, cached beside them and copied into each world's folder);
    `judge`: the score stage's judge (clipdpo_world.judges.JUDGES; the siglip ones train the world SigLIP on first
    use)."""
    # One torch thread: with two threads and a busy second core training ran ~10x slower. The CPU code paths
    # are the lab run's to pin (clipdpo_lab.run.pin_cpu) before torch loads; the components inherit them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from clipdpo_world.build import WorldConfig, build
    from clipdpo_world.clip import WorldBuildError
    from clipdpo_world.judges import judge_score_config, needs_siglip, world_siglip_scorer
    from clipdpo_world.stageconfigs import method_train_config, povid_source_config, world_qa_config

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    spacy_model = os.environ.get("CLIPDPO_SPACY_MODEL")
    say(f"world {seed}: building or reusing it under {cache_dir} (a first build takes several minutes) ...")
    writer = writer_beside(WorldConfig(seed=seed), cache_dir) if qa else None
    paths = build(
        WorldConfig(seed=seed),
        cache_dir,
        spacy_model=str(Path(spacy_model).resolve()) if spacy_model else None,
        say=print_now,
    )
    configs = {stage: dict(body) for stage, body in paths.configs.items()}
    if qa:
        if writer is not None:
            writer.join()
            if writer.exitcode != 0:
                raise WorldBuildError(f"world QA writer: its process ended with exit code {writer.exitcode} (above)")
        configs["generate"]["qa"] = world_qa_config(paths.root, say=print_now)
    if judge != "clip":
        siglip_scorer = world_siglip_scorer(paths.root, say=print_now) if needs_siglip(judge) else None
        configs["score"] = judge_score_config(configs["score"], judge, siglip_scorer, spacy_model)
    configs["world_train"] = configs["train"]  # the CLIP-DPO arm's; every arm's train config derives from it
    configs["train"] = method_train_config(configs["train"], method)
    configs["povid"] = povid_source_config(paths.images, seed)
    configs["evaluate"]["models"] = evaluate_models(paths.lvlm, run_root, method=method)
    say(f"world {seed}: {paths.root} (checks: {json.dumps(paths.checks)})")
    return configs, paths


def arm_train_config(configs: dict[str, dict], arm: str) -> dict:
    """The train config of `arm` (control: CLIP-DPO's): the world's train config for its method, then the run's
    `--set train.KEY=VALUE` overrides (configs[TRAIN_OVERRIDES]), applied after the method's settings exactly as
    the pipeline's own train config gets them, so `--set train.learning_rate=...` reaches every arm."""
    from clipdpo.config import apply_overrides
    from clipdpo_world.stageconfigs import method_train_config

    method, changed = ABLATIONS.get(arm, ("clipdpo" if arm == "control" else arm, []))
    # as overrides, not a dict merge: `povid.beta_2` changes one setting of the nested `povid`, not all of it
    train = apply_overrides(method_train_config(configs["world_train"], method), changed)
    return apply_overrides({"train": train}, list(configs.get(TRAIN_OVERRIDES, [])))["train"]


def train_control_arm(configs: dict[str, dict], run_root: str, seed: int = 0, say=print) -> str:
    """Shuffled scores -> filter -> train under `<run_root>-control`; returns its model artifact."""
    return control_arm(configs, arm_train_config(configs, "control"), run_root, seed=seed, say=say)


def train_method_arm(configs: dict[str, dict], method: str, run_root: str, say=print) -> str:
    """One method's arm under `<run_root>-<method>`, on the pipeline's images and CLIP-DPO pairs: POVID's pairs
    (povid, both), the pairs the method consumes, train; returns its model artifact."""
    from clipdpo import steps

    root = arm_root(run_root, method)
    train_config = arm_train_config(configs, method)
    train = json.dumps(train_config)
    trains = train_config.get("method", "clipdpo")  # an ablation arm (povid_text) trains its method's way
    say(f"{method} arm under {root}: pairs ...")
    images = steps.artifact_uri(run_root, "ingest")
    povid = steps.povid_step(root, json.dumps(configs["povid"]), trains, images_uri=images)
    pairs = steps.training_pairs_step(root, trains, steps.artifact_uri(run_root, "filter"), povid)
    say(f"{method} arm: train on {pairs} ...")
    return steps.train_step(root, train, launcher="local", pairs_uri=pairs)


def run_arms(
    configs: dict[str, dict],
    base: str,
    run_root: str,
    arms: tuple[str, ...],
    method: str = "clipdpo",
    seed: int = 0,
    say=print,
) -> dict:
    """The arms (clipdpo | povid | both | povid_text | control) other than the pipeline's own `method`, in this
    process after
    the pipeline, through the same step functions; then the evaluate step reruns on the run's own evaluation
    folder with base, the pipeline's model and every arm, reusing the responses already there. Returns that
    metrics.json."""
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"arm {arm!r}: expected one of {ARMS}")
        if arm == "control":
            train_control_arm(configs, run_root, seed, say)
        elif arm != method:
            train_method_arm(configs, arm, run_root, say)
    say("arms: evaluate (the responses already made are reused) ...")
    return evaluate(
        run_root, configs["evaluate"], evaluate_models(base, run_root, method=method, arms=arms), configs["train"]
    )


def run_control_arm(configs: dict[str, dict], base: str, run_root: str, seed: int = 0, say=print) -> dict:
    """The control arm alone (run_arms with ("control",)): base, clipdpo and control in one report."""
    return run_arms(configs, base, run_root, ("control",), seed=seed, say=say)


def headline(metrics: dict) -> str:
    """The report's headline numbers per model (AMBER CHAIR, Hal, Cover, discriminative F1, AMBER score)."""
    from clipdpo_lab.effect import summary

    rows = ["  model     CHAIR    Hal  Cover     F1  AMBER"]
    for name, row in summary(metrics).items():
        cells = [row[key] for key in ("chair", "hal", "cover", "f1", "amber_score")]
        rows.append(f"  {name:<8}" + "".join(f"{'-' if v is None else f'{v:.1f}':>7}" for v in cells))
    return "\n".join(rows)
