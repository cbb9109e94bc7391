"""Tiny random models built from configs: the local default run and the tests use them.

Nothing is downloaded. The models are real Hugging Face / open_clip architectures (a LLaVA,
a Llama chat model, a CLIP) at toy size, saved in the same formats as real checkpoints, so
every loading and inference path is the one a cluster run takes with real weights. Their
outputs are noise: the local run shows the pipeline working, not caption quality.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from clipdpo.llava_chat import CHAT_TEMPLATE, SPECIAL_TOKENS

TINY_CLIP_NAME = "clipdpo-tiny-clip"

# Words the tiny tokenizer learns: random generations come out as these words, not bytes.
CORPUS = (
    "a photo of a dog on a red sofa . two people walking in the park near the river . "
    "a cat sleeping near the window . a man holding a cup of coffee in the kitchen . "
    "a rocket on the launch pad under a blue sky . a woman riding a motorcycle on the street . "
    "a page of text with a title and printed words . an astronaut in a white suit with a flag . "
    "question : what is the man holding ? correct : a cup . wrong : a phone . "
    "is there a dog in the image ? yes no . what color is the sofa ? red green blue white black ."
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator([CORPUS] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_config(tokenizer, hidden: int = 32, intermediate: int = 0, heads: int = 2, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


@dataclass(frozen=True)
class LlavaShape:
    """Sizes of a tiny LLaVA. The defaults: 16 image tokens, a 32-wide Llama. image_size=336 with
    patch_size=14 gives LLaVA-1.5's 576 image tokens (the shared-prefix benchmark's narrow model)."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 16
    hidden: int = 32
    intermediate: int = 0  # 0 = 2 x hidden
    heads: int = 2
    layers: int = 2  # language-model layers


def build_tiny_llava(path: str, seed: int = 0, shape: LlavaShape = LlavaShape()) -> str:
    """Save a tiny LlavaForConditionalGeneration + LlavaProcessor at `path`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=2 * shape.vision_hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(tokenizer, shape.hidden, shape.intermediate, shape.heads, shape.layers),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size}
        ),
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_llm(path: str, seed: int = 1) -> str:
    """Save a tiny Llama chat model + tokenizer at `path`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    LlamaForCausalLM(_llama_config(tokenizer)).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_clip(folder: str) -> str:
    """Write a tiny open_clip model config into `folder`; returns the folder to register."""
    os.makedirs(folder, exist_ok=True)
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    Path(folder, f"{TINY_CLIP_NAME}.json").write_text(json.dumps(config))
    return folder


def build_all(root: str) -> dict[str, str]:
    """Build every tiny model under `root` once (kept between runs); return their paths."""
    paths = {
        "captioner": os.path.join(root, "tiny-llava"),
        "llm": os.path.join(root, "tiny-llm"),
        "clip_config_dir": os.path.join(root, "tiny-clip"),
    }
    if not os.path.exists(os.path.join(paths["captioner"], "config.json")):
        build_tiny_llava(paths["captioner"])
    if not os.path.exists(os.path.join(paths["llm"], "config.json")):
        build_tiny_llm(paths["llm"])
    build_tiny_clip(paths["clip_config_dir"])
    return paths
