"""The world CLIP: an open_clip ViT trained contrastively on world images and their correct captions.

It plays the web-trained CLIP of the paper: it never sees the LVLM's biased captions. It is saved
in open_clip's own format (a model-config JSON to register and a checkpoint file), so the score
stage loads it by path exactly as it would load DFN ViT-H/14:
`ScorerConfig(model_name=WORLD_CLIP_NAME, pretrained=<checkpoint>, model_config_dir=<folder>)`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from clipdpo_world import language
from clipdpo_world.scene import SIZE, Scene, render

log = logging.getLogger("clipdpo_world")

WORLD_CLIP_NAME = "clipdpo-world-clip"
CHECKPOINT = "open_clip_model.pt"


@dataclass(frozen=True)
class ClipConfig:
    """Architecture and training of the world CLIP (the issue's experiment: ViT 3x128 patch 8, text 2x64)."""

    embed_dim: int = 64
    vision_layers: int = 3
    vision_width: int = 128
    patch_size: int = 8
    text_layers: int = 2
    text_width: int = 64
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0
    min_pairwise_accuracy: float = 0.9  # the build refuses a CLIP that ranks worse (see pairwise_accuracy)


class WorldBuildError(RuntimeError):
    """A world model failed its self-check; the message says which check and by how much."""


def model_config(cfg: ClipConfig) -> dict:
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": SIZE,
            "layers": cfg.vision_layers,
            "width": cfg.vision_width,
            "head_width": 32,
            "patch_size": cfg.patch_size,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": cfg.text_width,
            "heads": 2,
            "layers": cfg.text_layers,
        },
    }


def register(config_dir: str, cfg: ClipConfig) -> str:
    """Write the model-config JSON into `config_dir` and register it with open_clip."""
    import open_clip

    Path(config_dir).mkdir(parents=True, exist_ok=True)
    Path(config_dir, f"{WORLD_CLIP_NAME}.json").write_text(json.dumps(model_config(cfg), indent=2))
    open_clip.add_model_config(Path(config_dir))
    return config_dir


def _lr(step: int, cfg: ClipConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor):
    """CLIP's symmetric cross-entropy over the batch (features normalised)."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits))
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def train(scenes: list[Scene], config_dir: str, cfg: ClipConfig, progress=print):
    """Train on (image, correct caption); returns (model, preprocess, tokenizer)."""
    import open_clip

    register(config_dir, cfg)
    torch.manual_seed(cfg.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(WORLD_CLIP_NAME)
    images = torch.stack([preprocess(render(s)) for s in scenes])
    texts = tokenizer([language.caption(s) for s in scenes])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.1)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    started = time.monotonic()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = torch.randint(len(scenes), (cfg.batch_size,), generator=generator)
        loss = contrastive_loss(
            model.encode_image(images[batch], normalize=True),
            model.encode_text(texts[batch], normalize=True),
            model.logit_scale.exp(),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % 200 == 0 or step + 1 == cfg.steps:
            progress(
                f"  world CLIP step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.monotonic() - started:.0f}s)"
            )
    return model.eval(), preprocess, tokenizer


@torch.no_grad()
def scores(model, preprocess, tokenizer, scenes: list[Scene], texts: list[str]) -> np.ndarray:
    """100 x cosine of each scene's image with its text (the score stage's scale)."""
    images = model.encode_image(torch.stack([preprocess(render(s)) for s in scenes]), normalize=True)
    captions = model.encode_text(tokenizer(texts), normalize=True)
    return (100 * (images * captions).sum(dim=1)).numpy()


def pairwise_accuracy(model, preprocess, tokenizer, scenes: list[Scene], seed: int = 0) -> float:
    """How often the correct caption outscores the same caption with an absent partner named
    (the hallucination the LVLM will make), over the scenes that have an absent partner."""
    rng = np.random.default_rng(seed)
    tempting = [(s, biased[0]) for s in scenes if (biased := language.with_partner(s, rng))]
    if not tempting:
        raise ValueError("pairwise_accuracy: no scene with an absent partner")
    kept = [s for s, _ in tempting]
    correct = scores(model, preprocess, tokenizer, kept, [language.caption(s) for s in kept])
    wrong = scores(model, preprocess, tokenizer, kept, [text for _, text in tempting])
    return float((correct > wrong).mean())


def save(model, folder: str, cfg: ClipConfig, metrics: dict) -> dict:
    """open_clip's format: `<folder>/<WORLD_CLIP_NAME>.json` (register the folder) + the checkpoint."""
    register(folder, cfg)
    torch.save({"state_dict": model.state_dict()}, Path(folder, CHECKPOINT))
    Path(folder, "world_clip.json").write_text(json.dumps({"config": asdict(cfg), **metrics}, indent=2))
    return scorer_config(folder)


def scorer_config(folder: str) -> dict:
    """The score stage's (and zero-shot text encoder's) config for the saved world CLIP."""
    return {
        "model_name": WORLD_CLIP_NAME,
        "pretrained": str(Path(folder, CHECKPOINT).resolve()),
        "model_config_dir": str(Path(folder).resolve()),
    }


def check(accuracy: float, cfg: ClipConfig) -> None:
    if accuracy < cfg.min_pairwise_accuracy:
        raise WorldBuildError(
            f"world CLIP ranks a correct caption above one naming an absent partner in {100 * accuracy:.1f}% of "
            f"held-out images, below the {100 * cfg.min_pairwise_accuracy:.0f}% it must reach to stand in for a "
            "web-trained CLIP; train it longer (ClipConfig.steps) or change the world"
        )
