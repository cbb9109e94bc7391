"""Load a LLaVA-style policy (and reference) model; choose what trains.

Any Hugging Face image-text-to-text model whose forward takes (input_ids, attention_mask,
pixel_values) with the image tokens already expanded in input_ids works: LlavaForConditional-
Generation (LLaVA-1.5) and compatible classes, and Qwen2.5-VL / Qwen3-VL (dynamic-resolution
images: their forward takes each image's patch grid too). A model on S3 is copied to a local folder first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from clipdpo.train.config import TrainConfig

log = logging.getLogger("clipdpo.train")

VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual")
# The modules that map image features into the language model. Qwen VL's live inside its tower (`visual.merger`;
# Qwen3-VL's deepstack layers have their own): `train_projector` trains them even where the tower is frozen.
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger", "deepstack_merger_list")


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def model_signature(path: str, cfg: TrainConfig) -> dict:
    """What identifies the reference model's outputs (cache key part): id, revision, config, weight files."""
    signature: dict[str, Any] = {"model": cfg.model, "revision": cfg.revision, "dtype": cfg.dtype}
    config_file = Path(path, "config.json")
    if config_file.exists():
        signature["config_sha256"] = hashlib.sha256(config_file.read_bytes()).hexdigest()
        signature["weights"] = sorted(
            (p.name, p.stat().st_size) for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin")
        )
    return signature


def load_model(path: str, cfg: TrainConfig):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        path, revision=cfg.revision, dtype=resolve_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code
    )


def load_processor(path: str, cfg: TrainConfig):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)


def _find_children(model, names: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The modules whose own name (the last part of the qualified one) is one of `names`, by qualified name."""
    return {name: module for name, module in model.named_modules() if name.split(".")[-1] in names}


def _saved_names(projectors: dict[str, torch.nn.Module]) -> list[str]:
    """PEFT `modules_to_save` entries (name suffixes) for the projectors: each one's own name, or for a list of
    them (Qwen3-VL's deepstack mergers, which PEFT cannot wrap as a whole) each element's `<list>.<i>`."""
    names: set[str] = set()
    for name, module in projectors.items():
        own = name.split(".")[-1]
        if isinstance(module, torch.nn.ModuleList):
            names.update(f"{own}.{i}" for i in range(len(module)))
        else:
            names.add(own)
    return sorted(names)


def prepare_policy(model, cfg: TrainConfig):
    """Freeze / LoRA-wrap per config; returns the model to train."""
    towers = _find_children(model, VISION_TOWER_NAMES)
    projectors = _find_children(model, PROJECTOR_NAMES)
    if cfg.freeze_vision_tower and not towers:
        raise ValueError(f"freeze_vision_tower: no module named one of {VISION_TOWER_NAMES} in {type(model).__name__}")
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        # Only the language model's linear layers: the CLIP tower has q/k/v_proj too.
        pattern = r".*language_model.*\.(" + "|".join(cfg.lora_target_modules) + r")"
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=pattern,
            bias="none",
            modules_to_save=_saved_names(projectors) if cfg.train_projector and projectors else None,
        )
        model = get_peft_model(model, lora)
    else:
        for module in towers.values() if cfg.freeze_vision_tower else []:
            module.requires_grad_(False)
        for module in projectors.values():
            module.requires_grad_(cfg.train_projector)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.finetune == "lora":
            model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return model


def save_hf(model, processor, cfg: TrainConfig, local_dir: str, state_dict: dict | None = None) -> list[str]:
    """Save in Hugging Face format: full model, or LoRA `adapter/` plus `merged/` (if save_merged)."""
    saved = []
    if cfg.finetune == "lora":
        model.save_pretrained(os.path.join(local_dir, "adapter"))
        processor.save_pretrained(os.path.join(local_dir, "adapter"))
        saved.append("adapter")
        if cfg.save_merged:
            merged = model.merge_and_unload()
            merged.save_pretrained(os.path.join(local_dir, "merged"))
            processor.save_pretrained(os.path.join(local_dir, "merged"))
            saved.append("merged")
    else:
        model.save_pretrained(local_dir, state_dict=state_dict)
        processor.save_pretrained(local_dir)
        saved.append(".")
    Path(local_dir, "clipdpo_train.json").write_text(json.dumps({"finetune": cfg.finetune, "saved": saved}))
    return saved
