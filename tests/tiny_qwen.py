"""Tiny Qwen2.5-VL and Qwen3-VL models with their processors, built from configs (nothing downloaded).

The architectures are the real transformers classes at toy size: a vision transformer over 4-pixel
patches whose 2x2 merger gives one image token per 8x8 pixels (dynamic resolution: a 40x40 image gives
25 image tokens, a 48x32 one 24, each image resized to multiples of 8 between 32x32 and 64x64 pixels),
and a 2-layer language model with multimodal rotary positions (M-RoPE: temporal / height / width
sections; Qwen3-VL interleaves them, normalises queries and keys and adds deepstack features).
The tokenizer is a byte-level BPE over the demo's words with the families' special tokens, and the chat
templates lay an image out as the real checkpoints' do: <|vision_start|><|image_pad|><|vision_end|>.
"""

from __future__ import annotations

from dataclasses import dataclass

# Qwen2-VL / Qwen2.5-VL-Instruct's template, as its checkpoints ship it (a default system turn)
QWEN2_5_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct's, without its tool and reasoning branches: no default system turn
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
PATCH, MERGE = 4, 2  # one image token per (PATCH * MERGE)^2 = 64 pixels
MIN_PIXELS, MAX_PIXELS = 32 * 32, 64 * 64
# With 8 rotary frequencies the real base (1e6) leaves the lowest ones, Qwen2.5-VL's whole width section, turning
# by < 1e-3 rad per position: a position bug there would hardly move a log-prob. At 10 every frequency turns by
# 0.1 to 1 rad per position.
ROPE_THETA = 10.0


@dataclass(frozen=True)
class QwenShape:
    """Sizes of a tiny Qwen VL: a 32-wide language model with 2 query heads on 1 key/value head, head_dim 16
    (8 rotary frequencies, split 2 / 3 / 3 between the temporal, height and width sections), over 4-pixel patches.
    `patch`, `window` and `pixels` give other image shapes (the shared-prefix bench: Qwen2.5-VL's 14-pixel patches,
    its 112-pixel windows, every image resized to 448x448)."""

    vision_hidden: int = 16
    vision_depth: int = 2
    hidden: int = 32
    intermediate: int = 0  # 0 = 2 x hidden
    heads: int = 2
    kv_heads: int = 1
    layers: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    patch: int = PATCH
    window: int = 2  # Qwen2.5-VL's attention windows, in merged tokens per side
    pixels: tuple[int, int] = (MIN_PIXELS, MAX_PIXELS)  # the processor's range of image areas


def qwen_tokenizer(chat_template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from clipdpo.demo.models import CORPUS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([CORPUS] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    fast.chat_template = chat_template
    return fast


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _text_config(tokenizer, shape: QwenShape, **family) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate or 2 * shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,  # Qwen has none (the default names one past this vocabulary)
        **family,
    }


def _vision_config(shape: QwenShape, **family) -> dict:
    return {
        "depth": shape.vision_depth,
        "hidden_size": shape.vision_hidden,
        "intermediate_size": 2 * shape.vision_hidden,
        "num_heads": 2,
        "patch_size": shape.patch,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "out_hidden_size": shape.hidden,
        **family,
    }


def qwen2_5_vl_config(tokenizer, shape: QwenShape = QwenShape()):
    from transformers import Qwen2_5_VLConfig

    rope = {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": list(shape.mrope_section)}
    return Qwen2_5_VLConfig(
        # windows of merged tokens in the first vision block, full attention in the last (as the real
        # model alternates them); window_size is in pixels
        vision_config=_vision_config(
            shape, window_size=shape.window * shape.patch * MERGE, fullatt_block_indexes=[shape.vision_depth - 1]
        ),
        text_config=_text_config(tokenizer, shape, rope_parameters=rope, use_sliding_window=False),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def qwen3_vl_config(tokenizer, shape: QwenShape = QwenShape()):
    from transformers import Qwen3VLConfig

    rope = {
        "rope_type": "default",
        "rope_theta": ROPE_THETA,
        "mrope_section": list(shape.mrope_section),
        "mrope_interleaved": True,
    }
    head_dim = shape.hidden // shape.heads
    return Qwen3VLConfig(
        # deepstack: the first vision block's merged features are added to the first decoder layer's output
        vision_config=_vision_config(shape, num_position_embeddings=64, deepstack_visual_indexes=[0]),
        text_config=_text_config(tokenizer, shape, rope_parameters=rope, head_dim=head_dim),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


FAMILIES = {  # family -> (model class, processor class, video processor class, config builder, chat template)
    "qwen2_5_vl": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        "Qwen2VLVideoProcessor",
        qwen2_5_vl_config,
        QWEN2_5_VL_TEMPLATE,
    ),
    "qwen3_vl": (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        "Qwen3VLVideoProcessor",
        qwen3_vl_config,
        QWEN3_VL_TEMPLATE,
    ),
}


def build_processor(family: str, shape: QwenShape = QwenShape()):
    import transformers

    _, processor_class, video_class, _, template = FAMILIES[family]
    sizes = {"patch_size": shape.patch, "merge_size": MERGE, "temporal_patch_size": 2}
    size = {"shortest_edge": shape.pixels[0], "longest_edge": shape.pixels[1]}
    return getattr(transformers, processor_class)(
        image_processor=transformers.Qwen2VLImageProcessor(size=size, **sizes),
        tokenizer=qwen_tokenizer(template),
        video_processor=getattr(transformers, video_class)(size=size, **sizes),
        chat_template=template,
    )


def build_tiny_qwen(
    path: str, family: str, seed: int = 0, unit_scale: bool = False, shape: QwenShape = QwenShape()
) -> str:
    """Save a tiny model of `family` ("qwen2_5_vl" | "qwen3_vl") and its processor at `path`;
    `unit_scale`: weights at O(1) scale (unit_scale.py), for the log-prob equality tests; `shape`: its sizes."""
    import torch
    import transformers
    from unit_scale import reinit_at_unit_scale

    model_class, _, _, config_builder, _ = FAMILIES[family]
    torch.manual_seed(seed)
    processor = build_processor(family, shape)
    model = getattr(transformers, model_class)(config_builder(processor.tokenizer, shape)).eval()
    if unit_scale:
        reinit_at_unit_scale(model, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
