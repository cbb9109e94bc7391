"""Qwen2.5-VL and Qwen3-VL through training's two layouts, on tiny models built from configs (tiny_qwen.py).

Their images have dynamic resolution (each image its own number of tokens) and their rotary positions are
multimodal (M-RoPE: temporal / height / width sections; an image's tokens sit at their place in its patch grid
and the text after it continues from the grid's largest position + 1). The shared-prefix layout must give each
response the positions it has in its own concatenated row, in all three sections: checked here against the
concatenated forward's log-probs and gradients, with weights at O(1) scale (unit_scale.py), and with position
bugs injected to show the check would see them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_shared_prefix import assert_gradients_match, set_attention, tolerance_excess
from tiny_qwen import build_tiny_qwen
from unit_scale import token_logps_spread

from clipdpo.train import lastlayer, layouts, prefix
from clipdpo.train.data import collate
from clipdpo.train.encode import PairEncoder

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
# Images of three sizes: 40x40, 48x32 and 32x56 pixels are 5x5, 4x6 and 7x4 merged patches (25, 24, 28 image
# tokens). Unequal prompts and responses on both sides, as in test_shared_prefix.py.
EXAMPLES = [
    ((40, 40), "describe the image", "a dog on a red sofa", "a cat"),
    (
        (48, 32),
        "what is in this picture of a park near the river ?",
        "two people walking in the park near the river on a blue day with a dog",
        "a rocket",
    ),
    ((32, 56), "hi", "a man", "a woman holding a cup of coffee in the kitchen"),
]
IMAGE_TOKENS = [25, 24, 28]
CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    path = build_tiny_qwen(str(tmp_path_factory.mktemp("models") / request.param), request.param, unit_scale=True)
    processor = AutoProcessor.from_pretrained(path)
    encoder = PairEncoder(processor, max_length=256)
    examples = [(Image.new("RGB", size, (200, 10, 10)), *texts) for size, *texts in EXAMPLES]
    encoded = encoder.encode_batch(examples, True)
    return path, AutoModelForImageTextToText.from_pretrained(path), encoded, processor.tokenizer.pad_token_id


def concatenated(model, encoded, pad, keep_logits: bool = False):
    """(sums, means, counts) of the concatenated layout under SDPA: the model places every position itself."""
    set_attention(model, "sdpa")
    return layouts.Concatenated(keep_logits).logps(model, collate(encoded, pad), CPU, model.dtype)


def shared(model, encoded, pad):
    return prefix.shared_prefix_logps(model, model, prefix.collate_shared_prefix(encoded, pad))


def language_model_positions(model, run) -> list[torch.Tensor]:
    """The [3, rows, L] position ids each call of the language model got while `run()` ran."""
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen


def test_each_image_gets_the_tokens_of_its_own_size(tiny):
    path, model, encoded, pad = tiny
    image_token = model.config.image_token_id
    assert [int((e.prompt_ids == image_token).sum()) for e in encoded] == IMAGE_TOKENS
    # the grid counts 4x4-pixel patches, merged 2x2 into one token; pixel_values: one row per patch
    assert [e.image_grid.tolist() for e in encoded] == [[[1, 10, 10]], [[1, 8, 12]], [[1, 14, 8]]]
    assert [len(e.pixel_values) for e in encoded] == [4 * n for n in IMAGE_TOKENS]
    batch = collate(encoded, pad)
    assert batch["image_grid_thw"].tolist() == [g for e in encoded for g in e.image_grid.tolist()] * 2
    assert len(batch["pixel_values"]) == 2 * 4 * sum(IMAGE_TOKENS)
    packed = prefix.collate_shared_prefix(encoded, pad)
    assert packed["image_grid_thw"].tolist() == batch["image_grid_thw"][:3].tolist()


def test_prompt_lengths_follow_each_image_size(tiny, tmp_path):
    """The pairs index counts prompt tokens without processing images: from the images shard's sizes, since the
    image's token count depends on its size (a 64x64 image, the encoder's calibration, gives 64, a 40x40 one 25)."""
    from pairs_fixture import write_pairs
    from transformers import AutoProcessor

    from clipdpo.artifacts import Artifact
    from clipdpo.storage import Storage
    from clipdpo.train.data import build_index

    path, _, encoded, _ = tiny
    encoder = PairEncoder(AutoProcessor.from_pretrained(path), max_length=256)
    assert encoder.dynamic_resolution and encoder.image_tokens == 64
    prompts, sizes = [e[1] for e in EXAMPLES], [e[0] for e in EXAMPLES]
    assert encoder.prompt_lengths(prompts, sizes) == [len(e.prompt_ids) for e in encoded]
    pairs = Artifact.open(Storage(), write_pairs(str(tmp_path / "data"), n_pairs=4, n_shards=1), kind="pairs")
    # room for 2 response tokens after a 40x40 image's prompt: every pair is kept, its responses cut
    short = PairEncoder(encoder.processor, max_length=encoder.prompt_lengths(["describe the image"], [(40, 40)])[0] + 2)
    index = build_index(pairs, short, truncate=True, on_bad_pair="skip")
    assert len(index) == 4 and index.truncated == 4 and not index.bad


def test_the_concatenated_rows_take_multimodal_positions(tiny):
    """Worked by hand for the first row: the image starts at position s (the tokens before it), its 5x5 tokens
    take (s, s + row, s + column), and the text after it continues at s + 5 in all three sections."""
    _, model, encoded, pad = tiny
    (positions,) = language_model_positions(model, lambda: concatenated(model, encoded, pad))
    row = collate(encoded, pad)["input_ids"][0]
    image = (row == model.config.image_token_id).nonzero()[:, 0]
    start, after = int(image[0]), int(image[-1]) + 1
    grid = torch.arange(5)
    assert positions[:, 0, :start].tolist() == [list(range(start))] * 3
    assert positions[0, 0, image].tolist() == [start] * 25
    assert positions[1, 0, image].tolist() == (start + grid.repeat_interleave(5)).tolist()
    assert positions[2, 0, image].tolist() == (start + grid.repeat(5)).tolist()
    length = len(encoded[0].prompt_ids) + len(encoded[0].chosen_ids)
    assert positions[:, 0, after:length].tolist() == [list(range(start + 5, start + 5 + length - after))] * 3


def test_the_shared_prefix_gives_each_response_the_positions_of_its_own_row(tiny):
    _, model, encoded, pad = tiny
    (own_rows,) = language_model_positions(model, lambda: concatenated(model, encoded, pad))
    packed = prefix.collate_shared_prefix(encoded, pad)
    positions = prefix.rotary_positions(model, packed)
    n = len(encoded)
    for i, item in enumerate(encoded):
        p, c, r = len(item.prompt_ids), len(item.chosen_ids), len(item.rejected_ids)
        assert torch.equal(positions[:, i, : p + c], own_rows[:, i, : p + c])  # the prefix and chosen
        assert torch.equal(positions[:, i, p + c : p + c + r], own_rows[:, n + i, p : p + r])  # rejected
    # what makes it matter: the image's 25 to 28 tokens advance the positions by 5 to 7, not by their count
    assert (positions.amax(dim=(0, 2)) < packed["position_ids"].amax(dim=1) - 15).all()


# sdpa and eager: one dense 4-D mask; clipdpo_shared_prefix: per row, the prefix causally and the responses
# on the prefix and themselves (BLOCK_MIN_LENGTH 0: the tiny rows take that path too)
@pytest.mark.parametrize("attention", ["sdpa", "eager", prefix.BLOCK_ATTENTION])
def test_log_probs_equal_the_concatenated_forward(tiny, attention, monkeypatch):
    _, model, encoded, pad = tiny
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)
    rows_run = []
    row_attention = prefix._pair_row_attention
    monkeypatch.setattr(prefix, "_pair_row_attention", lambda *a: rows_run.append(1) or row_attention(*a))
    with torch.no_grad():
        sums, means, counts = concatenated(model, encoded, pad)
        set_attention(model, attention)
        shared_sums, shared_means, shared_counts = shared(model, encoded, pad)
    # the block path ran per packed row in every layer but a last one that runs at the read positions only
    language_model = model.model.language_model
    layers = len(language_model.layers) - lastlayer.is_installed(language_model)
    assert len(rows_run) == (len(encoded) * layers if attention == prefix.BLOCK_ATTENTION else 0)
    assert shared_counts.tolist() == counts.tolist()
    # the tolerances of test_shared_prefix.py: fp32 sums in another order, |sums| up to ~170
    assert tolerance_excess(shared_sums, sums) <= 1, (shared_sums - sums).abs().max()
    assert tolerance_excess(shared_means, means, rtol=0) <= 1, (shared_means - means).abs().max()
    assert (sums < 0).all() and len(set(sums.tolist())) == 6


def test_the_weights_give_log_probs_that_tell_tokens_apart(tiny):
    _, model, encoded, pad = tiny
    batch = collate(encoded, pad)
    set_attention(model, "sdpa")
    with torch.no_grad():
        logits = layouts.model_logits(model, batch, CPU, model.dtype)
    lowest, highest = token_logps_spread(logits, batch["labels"])
    assert 0.5 < logits.std().item() < 10
    assert highest - lowest > 4 and highest < -0.5, (lowest, highest)


@pytest.mark.parametrize("attention", ["sdpa", prefix.BLOCK_ATTENTION])
def test_gradients_equal_the_concatenated_forward(tiny, attention, monkeypatch):
    _, model, encoded, pad = tiny
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)
    weights = torch.linspace(-1.0, 1.0, 2 * len(encoded))  # a loss that weighs every sequence differently
    grads = []
    for logps in (concatenated, shared):
        set_attention(model, attention if logps is shared else "sdpa")
        model.zero_grad(set_to_none=True)
        sums, means, _ = logps(model, encoded, pad)
        ((weights * sums).sum() + (weights * means).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert any(".visual." in n for n in grads[0]) and any("language_model" in n for n in grads[0])
    assert_gradients_match(grads[1], grads[0])
    assert max(g.abs().max().item() for g in grads[0].values()) > 1e-3


def _positions_with_bug(bug: str, mrope_positions):
    def buggy(model, batch):
        positions = mrope_positions(model, batch).clone()
        responses = (batch["segments"] == prefix.CHOSEN) | (batch["segments"] == prefix.REJECTED)
        if bug == "1-D positions":  # the LLaVA layout's p + k in every section: what the code did before M-RoPE
            return batch["position_ids"]
        if bug == "responses from zero":
            step = batch["position_ids"] - (batch["segments"] == prefix.PREFIX).sum(1, keepdim=True)
            return torch.where(responses, step.expand(3, -1, -1), positions)
        positions[2][responses] += 1  # "width one past": the width section alone off by one
        return positions

    return buggy


# The equality check's own power: each position bug must fail it by far. Measured: the 1-D positions miss by
# ~3,000 (Qwen2.5-VL) and ~6,000 (Qwen3-VL) tolerances; the smallest margin is Qwen2.5-VL's width section one
# past, ~470 tolerances (its width section holds the lowest frequencies; tiny_qwen.ROPE_THETA keeps them turning).
@pytest.mark.parametrize("bug", ["1-D positions", "responses from zero", "width one past"])
def test_the_equality_fails_with_a_position_bug(tiny, bug, monkeypatch):
    _, model, encoded, pad = tiny
    monkeypatch.setattr(prefix, "mrope_positions", _positions_with_bug(bug, prefix.mrope_positions))
    with torch.no_grad():
        sums, means, _ = concatenated(model, encoded, pad)
        shared_sums, shared_means, _ = shared(model, encoded, pad)
    assert tolerance_excess(shared_sums, sums) > 100, (shared_sums - sums).abs().max()
    assert tolerance_excess(shared_means, means, rtol=0) > 100, (shared_means - means).abs().max()


def test_the_last_layer_runs_at_the_read_positions_where_its_shape_allows(tiny):
    """Qwen2.5-VL's decoder layer has the Llama shape (lastlayer.py); Qwen3-VL's normalises queries and keys,
    so its last layer runs at every position (the equality tests above cover both)."""
    _, model, encoded, pad = tiny
    language_model = model.model.language_model
    set_attention(model, prefix.BLOCK_ATTENTION)  # prepare() installs the last layer's read-positions path
    reason = lastlayer.unsupported_reason(lastlayer.last_layer(language_model))
    rows = []
    hook = lastlayer.last_layer(language_model).mlp.register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[:-1].numel())
    )
    try:
        with torch.no_grad():
            shared(model, encoded, pad)
    finally:
        hook.remove()
    batch = prefix.collate_shared_prefix(encoded, pad)
    if model.config.model_type == "qwen2_5_vl":
        assert reason is None and lastlayer.is_installed(language_model)
        assert rows == [int(batch["logits_mask"].sum())]
    else:
        assert "q_norm" in reason and not lastlayer.is_installed(language_model)
        assert rows == [batch["input_ids"].numel()]


def _short_run(model: str, pairs: str, output: str, **overrides) -> tuple[dict, list]:
    import json

    from clipdpo import train
    from clipdpo.storage import Storage
    from clipdpo.train.config import TrainConfig

    values = dict(
        model=model,
        learning_rate=5e-3,
        global_batch_size=4,
        per_device_batch_size=2,
        max_length=128,
        warmup_ratio=0.0,
        max_steps=3,
        seed=7,
        reference_cache=output + "-refcache",
    )
    summary = train.run(TrainConfig(**{**values, **overrides}), pairs, output)
    rows = Storage().read_bytes(f"{output}/metrics.jsonl").decode().splitlines()
    return summary, [(r["loss"], r["rewards/margin"]) for r in map(json.loads, rows)]


@pytest.mark.slow  # four training runs of 3 steps: ~15 s
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_short_run_trains_the_same_in_both_layouts(tiny, finetune, tmp_path):
    """The stage's own run (reference pass, DPO loss, optimizer, save) in each layout: the same losses and
    margins through 3 steps, up to fp32 summation order; LoRA adapts the language model only."""
    from pairs_fixture import write_pairs
    from safetensors.torch import load_file

    path = tiny[0]
    pairs = write_pairs(str(tmp_path / "data"), n_pairs=12, n_shards=2)
    # no LoRA dropout: its masks are drawn per tensor shape, and the two layouts have different shapes
    lora = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0) if finetune == "lora" else {}
    runs = {
        forward: _short_run(path, pairs, str(tmp_path / forward), forward=forward, finetune=finetune, **lora)
        for forward in ("concatenated", "shared_prefix")
    }
    (summary, losses), (shared_summary, shared_losses) = runs["concatenated"], runs["shared_prefix"]
    assert shared_summary["forward"] == "shared_prefix" and summary["forward"] == "concatenated"
    assert len(losses) == 3 and abs(losses[-1][1]) > 1e-3  # the policy moved off the reference
    np.testing.assert_allclose(shared_losses, losses, rtol=1e-5, atol=1e-5)  # test_shared_prefix.py's short run
    base = load_file(f"{path}/model.safetensors")
    saved = f"{tmp_path}/shared_prefix/model/" + ("merged/" if finetune == "lora" else "")
    trained = load_file(saved + "model.safetensors")
    assert set(trained) == set(base)
    changed = {k for k in base if not torch.equal(trained[k], base[k])}
    # (saved under the checkpoints' own names: visual.* for the tower, model.layers.* or alike for the language model)
    assert any("visual." not in k and "layers." in k for k in changed)
    # the tower stays frozen; its merger (Qwen's projector) trains (train_projector)
    assert {k for k in changed if "visual." in k} == {k for k in changed if "merger" in k} != set()


def test_a_shape_with_the_real_patches_gives_qwen2_5_vls_image_tokens():
    """The shared-prefix bench's Qwen2.5-VL shape: 14-pixel patches merged 2x2, every image resized to 448x448,
    so any image is (448 / 14)^2 = 1024 patches and 256 image tokens, as the 7B model gives a 448x448 image."""
    from tiny_qwen import QwenShape, build_processor

    shape = QwenShape(patch=14, pixels=(448 * 448, 448 * 448))
    processor = build_processor("qwen2_5_vl", shape)
    encoder = PairEncoder(processor, max_length=512)
    for size in ((40, 40), (448, 448)):
        (encoded,) = encoder.encode_batch([(Image.new("RGB", size), "describe the image", "a dog", "a cat")], True)
        assert encoded.image_grid.tolist() == [[1, 32, 32]]
        assert int((encoded.prompt_ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 256
        assert len(encoded.pixel_values) == 1024  # one row per 14x14 patch
