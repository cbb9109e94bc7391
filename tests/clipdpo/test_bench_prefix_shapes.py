"""benchmarks/bench_prefix.py's `--family`: each family's narrow model has its real counterpart's image tokens and
the bench's width (the bench itself, minutes long, runs in `make bench`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from file_module import load_file_module
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from clipdpo.train.encode import PairEncoder

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_prefix.py"


def bench_prefix():
    return load_file_module("bench_prefix", BENCH)


@pytest.mark.parametrize(
    ("family", "model_type", "image_tokens"),
    # LLaVA-1.5: (336 / 14)^2; Qwen2.5-VL-7B on a 448x448 image: (448 / 14)^2 patches merged 2x2
    [("llava", "llava", 576), ("qwen2_5_vl", "qwen2_5_vl", 256)],
)
def test_the_family_flag_builds_that_familys_shapes(tmp_path, family, model_type, image_tokens):
    bench = bench_prefix()
    path, shape = bench.build_model(family, str(tmp_path / family), layers=2)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == model_type
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (256, 2)
    encoder = PairEncoder(AutoProcessor.from_pretrained(path), max_length=1024)
    # any image: LLaVA's processor resizes to 336x336, the bench's Qwen processor to 448x448
    (encoded,) = encoder.encode_batch([(Image.new("RGB", (40, 40)), "describe the image", "a dog", "a cat")], True)
    assert int((encoded.prompt_ids == encoder.image_token_id).sum()) == image_tokens
    if family == "qwen2_5_vl":
        head_size = config.text_config.hidden_size // config.text_config.num_attention_heads
        # the three M-RoPE sections share the head's rotary frequencies, as the 7B's 16/24/24 share its 64
        assert sum(shape["mrope_section"]) == head_size // 2
        assert config.vision_config.window_size == 112
