"""The world CLIP's image tower as a Hugging Face CLIPVisionModel: the world LVLM's vision tower.

LLaVA-1.5 sees through OpenAI's CLIP ViT-L/14, frozen; the world LVLM sees through the world CLIP
the same way. open_clip's VisionTransformer and transformers' CLIPVisionModel are the same network
(conv patch embedding without bias, class token, learned positions, pre-LayerNorm, pre-norm
blocks with exact GELU, post-LayerNorm on the class token); only the parameter names differ and
open_clip packs q/k/v into one matrix.
"""

from __future__ import annotations

import torch


def hf_vision_config(model_cfg: dict):
    """CLIPVisionConfig for an open_clip model config (as `clip.model_config` writes it)."""
    from transformers import CLIPVisionConfig

    vision = model_cfg["vision_cfg"]
    width = vision["width"]
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * vision.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision["layers"],
        num_attention_heads=width // vision["head_width"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        hidden_act="gelu",
        projection_dim=model_cfg["embed_dim"],
        layer_norm_eps=1e-5,
    )


def hf_vision_state(visual: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """open_clip `model.visual.state_dict()` -> a CLIPVisionModel state dict."""
    out = {
        "embeddings.class_embedding": visual["class_embedding"],
        "embeddings.position_embedding.weight": visual["positional_embedding"],
        "embeddings.patch_embedding.weight": visual["conv1.weight"],
        "pre_layrnorm.weight": visual["ln_pre.weight"],
        "pre_layrnorm.bias": visual["ln_pre.bias"],
        "post_layernorm.weight": visual["ln_post.weight"],
        "post_layernorm.bias": visual["ln_post.bias"],
    }
    names = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for i in range(layers):
        block, layer = f"transformer.resblocks.{i}", f"encoder.layers.{i}"
        for source, target in names.items():
            for part in ("weight", "bias"):
                out[f"{layer}.{target}.{part}"] = visual[f"{block}.{source}.{part}"]
        for part in ("weight", "bias"):
            q, k, v = visual[f"{block}.attn.in_proj_{part}"].chunk(3)
            out.update(
                {
                    f"{layer}.self_attn.q_proj.{part}": q,
                    f"{layer}.self_attn.k_proj.{part}": k,
                    f"{layer}.self_attn.v_proj.{part}": v,
                }
            )
    return {key: value.detach().clone() for key, value in out.items()}
