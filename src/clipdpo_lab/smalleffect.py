"""The world's claim in minutes: a small world, the real stages, base vs CLIP-DPO vs the shuffled control.

The full world takes 6-17 minutes to build; this one is small enough for `make test`. The stages are
the pipeline's own (`clipdpo.steps`: ingest -> generate -> score -> filter -> train, and the control
arm's shuffled scores -> filter -> train, through clipdpo_lab.localrun); only the measurement differs from
`effect.run_stages`: no
evaluate stage (spaCy AMBER on greedy captions), but the world's exact CHAIR/Hal/Cover of sampled
captions, several samples per held-out image (greedy counts on few images move a lot from world to world).
The QA arm (`qa_arm`) takes the paper's second data source on the same run: QA rows from its captions by the
world's ground-truth QA writer (clipdpo_world.qatruth), then the real score, filter and train steps.
"""

from __future__ import annotations

import time

from clipdpo_lab import localrun
from clipdpo_world.build import WorldConfig, WorldPaths
from clipdpo_world.clip import ClipConfig
from clipdpo_world.lvlm import LvlmConfig
from clipdpo_world.selfcheck import Bars


def small_world(seed: int = 0) -> WorldConfig:
    """A world built in ~3.5 CPU-minutes on one thread (210 s measured) whose LVLM still sees (the build's own
    checks, at their default bars: CLIP pairwise accuracy >= 90%, base greedy Cover >= 90%).

    Sizes chosen by design, not by the effect: the SFT mix is captions (90%) and main-object answers, no Yes/No
    questions (the claim is about captions), which makes the LVLM's jump to seeing come early (greedy Cover on 100
    held-out images, worlds 0 and 1: 75-78 at step 400, 87-93 at 800), so 1,600 steps leave the jump twice the
    steps it took (built with 1,600: greedy Cover on 300 images 96.3 on world 0, 92.7 on world 1); the CLIP gets
    250 steps (97.0% / 95.7% on worlds 0 / 1; the full world's 400 give 99%); the pool is the
    full world's 1,000 images x 6 samples (~600 pairs after the paper's filter: DPO needs the pairs, and
    generating them costs ~30 s); 300 held-out images as the full world."""
    return WorldConfig(
        seed=seed,
        train_images=1500,
        heldout_images=300,
        pool_images=1000,
        samples_per_image=6,
        clip=ClipConfig(steps=250),
        # the LVLM measured above (2 layers, untied embeddings, 30% biased captions, the loss over tokens; with
        # the world's loss per example and its new question draws, CLIP-DPO / control CHAIR measured 0.84); no
        # Yes/No questions, so the question self-checks are recorded only
        lvlm=LvlmConfig(
            steps=1600, caption_share=0.9, tie_embeddings=False, layers=2, bias_fraction=0.3, loss_per_example=False
        ),
        checks=Bars(enforced=False),
    )


def stage_configs(paths: WorldPaths, overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """The world's stage configs with `overrides` merged per stage."""
    return {stage: {**body, **(overrides or {}).get(stage, {})} for stage, body in paths.configs.items()}


def train_arms(
    paths: WorldPaths, run_root: str, overrides: dict[str, dict] | None = None, control_seed: int = 0, say=print
) -> dict[str, str]:
    """The stages up to train for CLIP-DPO under `run_root`, and the control arm (caption scores shuffled
    within each image, then the same filter and train) under `<run_root>-control`; returns model -> folder."""
    configs = stage_configs(paths, overrides)
    localrun.run_stages(configs, run_root, paths.images, say)
    started = time.monotonic()
    localrun.control_arm(configs, configs["train"], run_root, seed=control_seed, say=lambda line: None)
    say(f"  control: {time.monotonic() - started:.0f}s")
    return {
        "base": paths.lvlm,
        "clipdpo": localrun.model_uri(run_root),
        "control": localrun.model_uri(localrun.arm_root(run_root, "control")),
    }


def write_qa_candidates(candidates_uri: str, output_uri: str, truth_folder: str, storage=None) -> str:
    """A candidates artifact at `output_uri` holding only the QA rows the generate stage writes from the captions
    of `candidates_uri`, with the world's ground-truth stand-in as its QA writer (clipdpo_world.qatruth). Only QA
    rows: an arm trained on them alone shows what the QA pairs do, apart from the caption pairs."""
    from clipdpo import config as config_lib
    from clipdpo.artifacts import Artifact, ArtifactWriter
    from clipdpo.storage import Storage
    from clipdpo_world import qatruth
    from clipdpo_world.data import read_truth

    storage = storage or Storage()
    source = Artifact.open(storage, candidates_uri, kind="candidates")
    qa = qatruth.qa_config()
    config = {"captions": "left out", "qa": config_lib.to_dict(qa)}
    writer = ArtifactWriter(storage, output_uri, "candidates", config, [source], overwrite=True)
    truth = read_truth(truth_folder)
    for name, table in source.iter_shards():
        rows, stats = qatruth.qa_candidates(table, truth, qa)
        writer.write_shard(name, rows, dict(stats))
    writer.finalize(source.shard_names)
    return output_uri


def qa_arm(paths: WorldPaths, configs: dict[str, dict], run_root: str, name: str = "qa", say=print) -> str:
    """The QA arm beside `run_root` (whose generate stage has run), under `<run_root>-<name>`: the QA rows of its
    captions (write_qa_candidates), then the real score, filter and train steps; returns its model folder."""
    from clipdpo import steps

    arm = localrun.arm_root(run_root, name)
    started = time.monotonic()
    write_qa_candidates(steps.artifact_uri(run_root, "generate"), steps.artifact_uri(arm, "generate"), paths.images)
    say(f"  qa rows: {time.monotonic() - started:.0f}s")
    work = localrun.stage_work(configs, arm, paths.images)
    localrun.timed({stage: work[stage] for stage in ("score", "filter", "train")}, say)
    return localrun.model_uri(arm)
