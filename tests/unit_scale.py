"""Weights at O(1) scale for the log-prob equality tests.

At Hugging Face's default init (normal(0, 0.02)) a tiny model's logits are ~1e-2 across the vocabulary,
so every token's log-prob is ~ -log(vocab): a position-id, mask or wrong-row bug moves a sequence's
summed log-prob by ~1e-4, inside an fp32 tolerance. Re-initialised here so that every linear map keeps
its input's scale (normal(0, 1/sqrt(fan_in))) and embeddings are normal(0, 1): activations, attention
scores and logits are O(1), and per-token log-probs spread over several nats.
"""

from __future__ import annotations

import math

import torch

LOGIT_GAIN = 2.0  # logits of std ~2: per-token log-probs spread over several nats, none saturated


def reinit_at_unit_scale(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every Linear / Conv2d normal(0, 1/sqrt(fan_in)) with zero bias, every Embedding normal(0, 1); the LM
    head LOGIT_GAIN times that. Norm layers keep their unit gains. Returns `model`, changed in place."""
    generator = torch.Generator().manual_seed(seed)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                gain = LOGIT_GAIN if module is head else 1.0
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
        for name, parameter in model.named_parameters():  # CLIP's class embedding: a bare parameter
            if name.endswith("class_embedding"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def token_logps_spread(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(min, max) of the per-token log-probs of the labelled positions ([batch, seq, vocab] logits, labels
    with -100 elsewhere): the check that the weights give log-probs that tell tokens apart."""
    logps = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = labels[:, 1:]
    mask = labels != -100
    picked = logps.gather(-1, labels.clamp(min=0)[..., None])[..., 0][mask]
    return float(picked.min()), float(picked.max())


def build_unit_scale_llava(path: str, seed: int = 0) -> str:
    """The tiny LLaVA (demo.models.build_tiny_llava) saved at `path` with its weights at O(1) scale."""
    from transformers import LlavaForConditionalGeneration

    from clipdpo.demo.models import build_tiny_llava

    build_tiny_llava(path, seed=seed)
    model = LlavaForConditionalGeneration.from_pretrained(path)
    reinit_at_unit_scale(model, seed).save_pretrained(path)
    return path
