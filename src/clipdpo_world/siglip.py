"""The world SigLIP: the world CLIP's architecture and training, with SigLIP's sigmoid loss and logit bias.

It stands in for a web-trained SigLIP (ViT-SO400M-14-SigLIP) as the world CLIP stands in for DFN ViT-H/14, so the
score stage's SigLIP judge (JudgeConfig scale `siglip`) can be measured on the world against its CLIP judge. Same
images, captions, tower sizes, steps, batch, learning rate and seed as the world CLIP (a ClipConfig); what differs
is SigLIP's: the loss (every image-text pair of the batch a binary match / no-match, Zhai et al. 2023) and the
model config's `init_logit_scale` log 10 and `init_logit_bias` -10, which open_clip's SigLIP configs and recipe use.

An add-on of a built world, cached apart from it: `ensure(world_root)` returns `<world root>/siglip-<key>/`, training
it there on first use (under `.partial`, renamed, `world_siglip.json` written last). The key hashes the world's key
(the training scenes come from the world's code and seed), this module and the config, so a changed SigLIP never
rebuilds a world, and this module is not one of the world's (build.WORLD_MODULES).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from clipdpo_world import clip, data, language
from clipdpo_world.clip import CHECKPOINT, ClipConfig
from clipdpo_world.scene import Scene, SceneConfig, render

# Not "...siglip": open_clip's get_tokenizer gives a model named so SigLIP's sentencepiece tokenizer (a download);
# this one keeps the world CLIP's text tower and tokenizer.
WORLD_SIGLIP_NAME = "clipdpo-world-sigmoid"
RECORD = "world_siglip.json"  # written last: marks a finished SigLIP


@dataclass(frozen=True)
class SiglipConfig:
    """The world SigLIP: the world CLIP's architecture and schedule (`tower`), SigLIP's initial temperature and bias."""

    tower: ClipConfig = field(default_factory=ClipConfig)
    init_logit_scale: float = math.log(10)  # t = 10 at the start (SigLIP's recipe; CLIP starts at 1/0.07)
    init_logit_bias: float = -10.0  # b: most pairs of a batch are no match, so start where sigmoid says so


def model_config(cfg: SiglipConfig) -> dict:
    """The world CLIP's open_clip model config with SigLIP's logit scale and bias (open_clip builds a logit_bias
    parameter from `init_logit_bias`, which is how the score stage's judge tells a SigLIP)."""
    return {
        **clip.model_config(cfg.tower),
        "init_logit_scale": cfg.init_logit_scale,
        "init_logit_bias": cfg.init_logit_bias,
    }


def register(config_dir: str, cfg: SiglipConfig) -> str:
    """Write the model-config JSON into `config_dir` and register it with open_clip."""
    import open_clip

    Path(config_dir).mkdir(parents=True, exist_ok=True)
    Path(config_dir, f"{WORLD_SIGLIP_NAME}.json").write_text(json.dumps(model_config(cfg), indent=2))
    open_clip.add_model_config(Path(config_dir))
    return config_dir


def sigmoid_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's loss: -sum over all n x n pairs of log sigmoid(z (t cos + b)), z = +1 on the diagonal (a match) and
    -1 elsewhere, divided by n (open_clip's SigLipLoss on one device)."""
    logits = logit_scale * image_features @ text_features.T + logit_bias
    signs = 2 * torch.eye(len(logits), dtype=logits.dtype) - 1
    return -torch.nn.functional.logsigmoid(signs * logits).sum() / len(logits)


def train(scenes: list[Scene], config_dir: str, cfg: SiglipConfig, progress=print):
    """Train on (image, correct caption) as the world CLIP trains (clip.train), with the sigmoid loss; returns
    (model, preprocess, tokenizer)."""
    import open_clip

    register(config_dir, cfg)
    tower = cfg.tower
    torch.manual_seed(tower.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_SIGLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(WORLD_SIGLIP_NAME)
    images = torch.stack([preprocess(render(s)) for s in scenes])
    texts = tokenizer([language.caption(s) for s in scenes])
    optimizer = torch.optim.AdamW(model.parameters(), lr=tower.learning_rate, weight_decay=0.1)
    generator = torch.Generator().manual_seed(tower.seed)
    model.train()
    started = time.monotonic()
    for step in range(tower.steps):
        for group in optimizer.param_groups:
            group["lr"] = clip._lr(step, tower)
        batch = torch.randint(len(scenes), (tower.batch_size,), generator=generator)
        loss = sigmoid_loss(
            model.encode_image(images[batch], normalize=True),
            model.encode_text(texts[batch], normalize=True),
            model.logit_scale.exp(),
            model.logit_bias,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # the world CLIP's cap, as open_clip's trainer clamps both
        if (step + 1) % 200 == 0 or step + 1 == tower.steps:
            progress(
                f"  world SigLIP step {step + 1}/{tower.steps} loss {loss.item():.3f} "
                f"({time.monotonic() - started:.0f}s)"
            )
    return model.eval(), preprocess, tokenizer


def scorer_config(folder: str) -> dict:
    """The score stage's config for a saved world SigLIP (its judge's scale is found by its logit_bias)."""
    return {
        "model_name": WORLD_SIGLIP_NAME,
        "pretrained": str(Path(folder, CHECKPOINT).resolve()),
        "model_config_dir": str(Path(folder).resolve()),
    }


def world_config(record: dict) -> SiglipConfig:
    """The SigLIP of a built world (its world.json `record`): the tower and schedule of its CLIP, seeded as the
    build seeds its CLIP (build._build_clip: ClipConfig.seed + 1000 x world seed)."""
    tower = ClipConfig(**record["config"]["clip"])
    return SiglipConfig(tower=replace(tower, seed=tower.seed + 1000 * record["config"]["seed"]))


def siglip_key(world: str, cfg: SiglipConfig) -> str:
    """The SigLIP's cache key: the world's key (what it trains on), its config and this module's code."""
    from clipdpo_world.build import code_digest  # build imports the stage configs, which import this module

    digest = hashlib.sha256(json.dumps({"world": world, "config": asdict(cfg)}, sort_keys=True).encode())
    digest.update(code_digest(__file__))
    return digest.hexdigest()[:16]


def ensure(world_root: str, cfg: SiglipConfig | None = None, say=print) -> str:
    """`<world_root>/siglip-<key>/` (config `cfg`, else the world CLIP's: world_config), trained first when missing;
    refuses a SigLIP that ranks worse than its tower config's min_pairwise_accuracy (WorldBuildError)."""
    root = Path(world_root)
    record = json.loads((root / "world.json").read_text())  # build.WORLD_FILE
    cfg = cfg or world_config(record)
    target = root / f"siglip-{siglip_key(record['key'], cfg)}"
    if not (target / RECORD).exists():
        train_into(target, record, cfg, say)
    return str(target)


def train_into(target: Path, record: dict, cfg: SiglipConfig, say) -> None:
    """Train and check the SigLIP on the world's training scenes, saved as `target` (built under `.partial`, the
    record last, so a crash leaves nothing that passes for a finished SigLIP)."""
    world = record["config"]
    scene_cfg = SceneConfig(**world["scene"])
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    say(f"world SigLIP: training on the world's {world['train_images']} correct captions into {target} ...")
    train_scenes = data.scenes(world["seed"], "train", world["train_images"], scene_cfg)
    model, preprocess, tokenizer = train(train_scenes, str(partial), cfg, progress=say)
    heldout = data.scenes(world["seed"], "heldout", world["heldout_images"], scene_cfg)
    accuracy = clip.pairwise_accuracy(model, preprocess, tokenizer, heldout, seed=world["seed"])
    say(f"world SigLIP: correct caption ranked above a partner-hallucinating one in {100 * accuracy:.1f}%")
    check(accuracy, cfg)
    torch.save({"state_dict": model.state_dict()}, partial / CHECKPOINT)
    measured = {
        "config": asdict(cfg),
        "pairwise_accuracy": round(accuracy, 4),
        "logit_scale": round(model.logit_scale.exp().item(), 4),
        "logit_bias": round(model.logit_bias.item(), 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    (partial / RECORD).write_text(json.dumps(measured, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def check(accuracy: float, cfg: SiglipConfig) -> None:
    if accuracy < cfg.tower.min_pairwise_accuracy:
        raise clip.WorldBuildError(
            f"world SigLIP ranks a correct caption above one naming an absent partner in {100 * accuracy:.1f}% of "
            f"held-out images, below the {100 * cfg.tower.min_pairwise_accuracy:.0f}% the world CLIP must reach; "
            "train it longer (its tower config's steps)"
        )
