"""Build the world once: image folders, world CLIP, world LVLM, benchmark and the stage configs to run on it.

The build is cached under `<out>/<key>/` where the key hashes the world's code (every module of
this package) and its config: a change to either builds anew, an unchanged world is reused at
once. `world.json` is written last and marks a finished build. Each model is checked before it
is kept; a CLIP that cannot rank or an LVLM that cannot see stops the build with WorldBuildError.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from clipdpo import llava_chat
from clipdpo_world import benchmark, clip, data, lvlm, metrics, selfcheck
from clipdpo_world.clip import ClipConfig, WorldBuildError
from clipdpo_world.lvlm import LvlmConfig
from clipdpo_world.scene import SceneConfig
from clipdpo_world.selfcheck import Bars
from clipdpo_world.stageconfigs import stage_configs

WORLD_FILE = "world.json"
# The modules whose code decides what a build makes (the entry point and the stage runner do not).
WORLD_MODULES = (
    "scene.py",
    "language.py",
    "data.py",
    "clip.py",
    "tower.py",
    "lvlm.py",
    "benchmark.py",
    "metrics.py",
    "selfcheck.py",
    "build.py",
)


@dataclass(frozen=True)
class WorldConfig:
    """One world: its seed, how many images each split holds, and how its models are made."""

    seed: int = 0
    train_images: int = 3000  # the CLIP's and the LVLM's training images
    heldout_images: int = 300  # the benchmark's images and the self-checks'
    pool_images: int = 1000  # the images the pipeline ingests (the paper's unlabelled pool)
    samples_per_image: int = 6  # sampled captions per pool image (temperature 1.0) in the generate config
    scene: SceneConfig = field(default_factory=SceneConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    lvlm: LvlmConfig = field(default_factory=LvlmConfig)
    checks: Bars = field(default_factory=Bars)  # what the world LLaVA must reach (selfcheck)


@dataclass(frozen=True)
class WorldPaths:
    """Where a built world lies; `configs` are the stage configs (ingest ... evaluate) for a run on it."""

    root: str
    images: str  # the pool's PNG folder (ingest source) with truth.jsonl
    clip: str  # open_clip model-config folder holding the checkpoint
    lvlm: str  # Hugging Face LLaVA folder with its processor
    benchmarks: str  # AMBER/, zero-shot/, pope/
    configs: dict
    checks: dict  # the self-checks' measurements


def code_digest(path: str | Path) -> bytes:
    """What a module's code does, not how it is written down: its syntax tree without docstrings, comments,
    formatting or type annotations (a reformat, a reworded comment or a typing fix does not rebuild every world;
    a dataclass field keeps its name and default, which is what builds with it)."""
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
        if isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
        elif isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).digest()


def world_key(cfg: WorldConfig) -> str:
    """sha256 of the world-making code (WORLD_MODULES, and the product's chat template the LVLM is built with)
    and the config: what makes a build reusable."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for name in WORLD_MODULES:
        digest.update(name.encode() + code_digest(Path(__file__).with_name(name)))
    digest.update(code_digest(llava_chat.__file__))
    digest.update(json.dumps(kernel_paths(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def folder_name(cfg: WorldConfig, key: str | None = None) -> str:
    """The built world's folder under the cache: `world<seed>-<world key>`."""
    return f"world{cfg.seed}-{key or world_key(cfg)}"


def kernel_paths() -> dict[str, str]:
    """The CPU code paths this process's torch runs (its vector kernels and the MKL / oneDNN pins it loaded
    with): a world built on other kernels has other bits, so it is another world (clipdpo.determinism)."""
    import torch

    from clipdpo.determinism import PINNED_VARIABLES

    pins = {
        name: os.environ.get(name, "")
        for name in PINNED_VARIABLES
        if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    return {"aten": torch.backends.cpu.get_cpu_capability(), "threads": str(torch.get_num_threads()), **pins}


def _build_clip(cfg: WorldConfig, train, heldout, folder: str, say) -> tuple[dict, tuple[dict, dict]]:
    clip_cfg = replace(cfg.clip, seed=cfg.clip.seed + 1000 * cfg.seed)
    started = time.monotonic()
    model, preprocess, tokenizer = clip.train(train, folder, clip_cfg, progress=say)
    tower_parts = (clip.model_config(clip_cfg), model.visual.state_dict())
    accuracy = clip.pairwise_accuracy(model, preprocess, tokenizer, heldout, seed=cfg.seed)
    say(
        f"world CLIP: correct caption ranked above a partner-hallucinating one in {100 * accuracy:.1f}% "
        f"of held-out images ({time.monotonic() - started:.0f}s)"
    )
    clip.check(accuracy, clip_cfg)
    measured = {"pairwise_accuracy": round(accuracy, 4), "seconds": round(time.monotonic() - started, 1)}
    clip.save(model, folder, clip_cfg, measured)
    return measured, tower_parts


def _build_lvlm(cfg: WorldConfig, train, heldout, work: Path, clip_tower, say) -> dict:
    """Train the world LLaVA into `work`/lvlm and check it (selfcheck) before keeping it; an SFT that misses the
    self-checks runs again from another initialisation, up to `LvlmConfig.attempts` in all."""
    started = time.monotonic()
    for attempt in range(cfg.lvlm.attempts):
        lvlm_cfg = replace(cfg.lvlm, seed=cfg.lvlm.seed + 1000 * cfg.seed + 100 * attempt)
        model, processor, measured = _train_lvlm(cfg, lvlm_cfg, train, heldout, work, clip_tower, say)
        missed = selfcheck.failures(measured["questions"], cfg.checks)
        if not missed or not cfg.checks.enforced or attempt + 1 == cfg.lvlm.attempts:
            break
        say(
            f"world LVLM: SFT attempt {attempt + 1} missed its self-checks ({'; '.join(missed)}); "
            "again from another initialisation"
        )
    if measured["greedy"]["cover"] < 100 * lvlm_cfg.min_cover:
        raise WorldBuildError(
            f"world LVLM does not see: greedy Cover {measured['greedy']['cover']:.1f}% of held-out objects, below "
            f"the {100 * lvlm_cfg.min_cover:.0f}% required (it learns to see in a jump during SFT; this seed may "
            "need more LvlmConfig.steps, or it never makes the jump: try another seed)"
        )
    selfcheck.require(measured["questions"], cfg.checks)
    model.save_pretrained(str(work / "lvlm"))
    processor.save_pretrained(str(work / "lvlm"))
    return {**measured, "attempts": attempt + 1, "seconds": round(time.monotonic() - started, 1)}


def _train_lvlm(cfg: WorldConfig, lvlm_cfg: LvlmConfig, train, heldout, work: Path, clip_tower, say):
    """One SFT of the world LLaVA and its measurements: (model, processor, {greedy, sampled, questions})."""
    started = time.monotonic()
    tokenizer = lvlm.build_tokenizer(lvlm.corpus(train, lvlm_cfg), lvlm_cfg.vocab_size)
    model, processor = lvlm.build_model(tokenizer, lvlm_cfg, clip_tower)
    batches = lvlm.SFTBatches(train, processor, lvlm_cfg)
    probe = heldout[:100]

    def progress_check(step: int) -> None:
        seen = metrics.caption_metrics(probe, lvlm.describe(model, processor, probe))
        say(f"    greedy on 100 held-out images: {seen.as_dict()}")

    lvlm.train(model, batches, lvlm_cfg, progress=say, on_checkpoint=progress_check)
    greedy = metrics.caption_metrics(heldout, lvlm.describe(model, processor, heldout))
    sampled_texts = lvlm.describe(model, processor, heldout, temperature=1.0, seed=cfg.seed)
    sampled = metrics.caption_metrics(heldout, sampled_texts)
    say(f"world LVLM ({time.monotonic() - started:.0f}s): greedy {greedy.as_dict()}, sampled {sampled.as_dict()}")
    paths = {"benchmarks": str(work / "benchmarks"), "clip": str(work / "clip")}
    questions = selfcheck.measure(model, processor, heldout, cfg.seed, paths, sampled_texts)
    say(
        f"world LVLM self-checks: POPE {questions['pope']}, AMBER F1 {questions['amber_f1']:.1f}, zero-shot "
        f"{questions['zero_shot']['top1']:.1f}; damaged: POPE {questions['pope_damaged']}, AMBER F1 "
        f"{questions['amber_f1_damaged']:.1f}, CHAIR {questions['damaged_chair']:.1f}, zero-shot "
        f"{questions['zero_shot']['damaged_top1']:.1f}"
    )
    return model, processor, {"greedy": greedy.as_dict(), "sampled": sampled.as_dict(), "questions": questions}


def build(cfg: WorldConfig, out_dir: str, spacy_model: str | None = None, say=print) -> WorldPaths:
    """Build (or reuse) the world under `<out_dir>/<world_key>/` and return its paths and stage configs."""
    key = world_key(cfg)
    root = Path(out_dir, folder_name(cfg, key)).resolve()
    if (root / WORLD_FILE).exists():
        say(f"world {root.name}: cached")
        return _paths(root, cfg, spacy_model)
    work = Path(out_dir, root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    say(f"world {root.name}: building (seed {cfg.seed}); images ...")
    train = data.scenes(cfg.seed, "train", cfg.train_images, cfg.scene)
    heldout = data.scenes(cfg.seed, "heldout", cfg.heldout_images, cfg.scene)
    data.write_folder(str(work / "images"), data.scenes(cfg.seed, "pool", cfg.pool_images, cfg.scene), cfg.scene)
    data.write_folder(str(work / "heldout"), heldout, cfg.scene)
    benchmark.write(str(work / "benchmarks"), heldout, cfg.seed, cfg=cfg.scene)
    say("world CLIP: training on correct captions ...")
    checks = {}
    checks["clip"], clip_tower = _build_clip(cfg, train, heldout, str(work / "clip"), say)
    say("world LVLM: SFT on biased captions and questions ...")
    checks["lvlm"] = _build_lvlm(cfg, train, heldout, work, clip_tower, say)
    from clipdpo.determinism import record as cpu_record

    record = {
        "key": key,
        "config": asdict(cfg),
        "checks": checks,
        "seconds": round(time.monotonic() - started, 1),
        "cpu": cpu_record(),
    }
    (work / WORLD_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(work, root)
    say(f"world {root.name}: built in {record['seconds']:.0f}s")
    return _paths(root, cfg, spacy_model)


def _paths(root: Path, cfg: WorldConfig, spacy_model: str | None) -> WorldPaths:
    record = json.loads((root / WORLD_FILE).read_text())
    paths = {
        "images": str(root / "images"),
        "clip": str(root / "clip"),
        "lvlm": str(root / "lvlm"),
        "benchmarks": str(root / "benchmarks"),
    }
    configs = stage_configs(paths, benchmark.config(paths["benchmarks"]), cfg.seed, cfg.samples_per_image, spacy_model)
    return WorldPaths(root=str(root), configs=configs, checks=record["checks"], **paths)
