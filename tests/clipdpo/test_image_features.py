"""Image features computed once (imagefeatures.py): the same losses and gradients as the model's own image path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdpo.storage import Storage
from clipdpo.train import imagefeatures, layouts, prefix
from clipdpo.train.encode import PairEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs_fixture import write_pairs  # noqa: E402
from unit_scale import build_unit_scale_llava  # noqa: E402

EXAMPLES = [  # unequal prompts and responses (padded rows in both layouts), three distinct images
    ((200, 10, 10), "describe the image", "a dog on a red sofa", "a cat"),
    ((10, 200, 10), "what is in this picture of a park near the river ?", "two people walking in the park", "a rocket"),
    ((10, 10, 200), "hi", "a man", "a woman holding a cup of coffee in the kitchen"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(1)
    # weights at O(1) scale (unit_scale.py): features given to the wrong pair move a log-prob by nats, not 1e-4
    path = build_unit_scale_llava(str(tmp_path_factory.mktemp("models") / "tiny-llava"))
    processor = AutoProcessor.from_pretrained(path)
    encoded = PairEncoder(processor, max_length=70).encode_batch(
        [(Image.new("RGB", (40, 40), rgb), *texts) for rgb, *texts in EXAMPLES], True
    )
    model = LlavaForConditionalGeneration.from_pretrained(path)
    model.model.vision_tower.requires_grad_(False)  # clipdpo's default: freeze_vision_tower
    return path, model, encoded, processor.tokenizer.pad_token_id


def test_the_selected_features_are_what_the_model_projects(tiny):
    _, model, encoded, _ = tiny
    pixels = torch.cat([e.pixel_values for e in encoded])
    features = imagefeatures.encode_images(model, pixels)
    with torch.no_grad():
        own = torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)
        ours = torch.stack(imagefeatures.project(model, features)["image"].pooler_output)
    assert features.shape == (3, 16, model.config.vision_config.hidden_size)  # 16 patches, CLS dropped
    assert torch.equal(ours, own)  # the very same operations on the same inputs
    assert not torch.allclose(ours[0], ours[1])  # three images that differ


def run_layout(model, layout, encoded, pad, cache):
    """(sums, means) of one batch and the gradients of a loss weighing every sequence differently."""
    batch = layout.collate(encoded, pad)
    batch["image_ids"] = torch.arange(len(encoded))
    if cache is not None:
        batch = cache.attach(batch, layout.pair_images, torch.device("cpu"), torch.float32)
        assert "image_features" in batch
    model.zero_grad(set_to_none=True)
    sums, means, _ = layout.logps(model, batch, torch.device("cpu"), torch.float32)
    weights = torch.linspace(-1.0, 1.0, len(sums))
    ((weights * sums).sum() + (weights * means).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sums.detach(), means.detach(), grads


@pytest.mark.parametrize("forward", ["concatenated", "shared_prefix"])
def test_cached_features_give_the_same_log_probs_and_gradients(tiny, forward, monkeypatch):
    _, model, encoded, pad = tiny
    monkeypatch.setattr(prefix, "BLOCK_MIN_LENGTH", 0)  # the tiny rows take the block path too
    layout = layouts.choose(forward, model)
    encodes = []
    hook = model.model.vision_tower.register_forward_hook(lambda m, args, out: encodes.append(args[0].shape[0]))
    try:
        sums, means, grads = run_layout(model, layout, encoded, pad, None)
        own_encodes = list(encodes)
        cache = imagefeatures.ImageFeatureCache(model, budget_bytes=2**30)
        cached = [run_layout(model, layout, encoded, pad, cache) for _ in range(2)]  # encode, then reuse
    finally:
        hook.remove()
    # the model's own path: the concatenated rows encode each image twice; the cache: once, then never
    assert own_encodes == [2 * len(encoded) if forward == "concatenated" else len(encoded)]
    assert encodes[len(own_encodes) :] == [len(encoded)] and (cache.encoded, cache.reused) == (3, 3)
    assert grads.keys() == cached[0][2].keys() and any("multi_modal_projector" in n for n in grads)
    assert not any("vision_tower" in n for n in grads)  # frozen
    for cached_sums, cached_means, cached_grads in cached:
        # fp32: the tower runs on 3 images instead of 6 (concatenated), a batch of another shape whose
        # matmuls may block their sums differently: a few ulps, well inside 1e-5 of |sums| < 70
        assert torch.allclose(cached_sums, sums, rtol=1e-5, atol=1e-5), (cached_sums - sums).abs().max()
        assert torch.allclose(cached_means, means, rtol=0, atol=1e-5)
        for name, expected in grads.items():
            scale = max(expected.abs().max().item(), 1e-3)  # relative to the tensor's largest entry
            assert (cached_grads[name] - expected).abs().max().item() <= 1e-5 * scale, name
    assert len(set(sums.tolist())) == len(sums) and max(g.abs().max().item() for g in grads.values()) > 1e-3


def test_a_frozen_reference_model_reads_the_same_features_through_its_own_projector(tiny):
    """reference=model: the policy's cached features serve the reference too, projected by the reference."""
    from transformers import LlavaForConditionalGeneration

    path, model, encoded, pad = tiny
    reference = LlavaForConditionalGeneration.from_pretrained(path).requires_grad_(False)
    with torch.no_grad():
        for param in reference.model.multi_modal_projector.parameters():
            param.mul_(0.5)  # a projector that differs from the policy's
    layout = layouts.choose("concatenated", model)  # logits at response positions only, as a run's
    batch = layout.collate(encoded, pad)
    batch["image_ids"] = torch.arange(len(encoded))
    cached = imagefeatures.ImageFeatureCache(model, 2**30).attach(
        batch, layout.pair_images, torch.device("cpu"), torch.float32
    )
    with torch.no_grad():
        own = layout.logps(reference, batch, torch.device("cpu"), torch.float32)[0]
        shared = layout.logps(reference, cached, torch.device("cpu"), torch.float32)[0]
        policy = layout.logps(model, cached, torch.device("cpu"), torch.float32)[0]
    assert torch.allclose(shared, own, rtol=1e-5, atol=1e-5)  # as above
    assert not torch.allclose(shared, policy, atol=1e-3)  # the reference's projector, not the policy's


def test_what_is_not_cached_and_why(tiny):
    from transformers import LlavaForConditionalGeneration

    path, model, _, _ = tiny
    assert imagefeatures.disabled_reason(model, two_stage=False, budget_mb=1) is None
    trainable = LlavaForConditionalGeneration.from_pretrained(path)  # freeze_vision_tower=false
    assert "vision tower trains" in imagefeatures.disabled_reason(trainable, two_stage=False, budget_mb=1)
    assert "POVID" in imagefeatures.disabled_reason(model, two_stage=True, budget_mb=1)
    assert imagefeatures.disabled_reason(model, two_stage=False, budget_mb=0) == "image_feature_cache_mb=0"


def test_under_zero3_a_rank_runs_the_tower_whenever_another_rank_needs_it(tiny):
    """ZeRO-3 gathers the tower's weights collectively: a rank whose batch is cached still runs the tower
    when another rank lacks an image, and keeps the features it had."""
    _, model, encoded, _ = tiny
    pixels = torch.cat([e.pixel_values for e in encoded])
    calls = []
    other_rank_missing = True

    def any_rank_missing(missing: bool) -> bool:
        calls.append(missing)
        return missing or other_rank_missing

    cache = imagefeatures.ImageFeatureCache(model, 2**30, any_rank_missing)
    first = cache.lookup(torch.arange(3), pixels, torch.device("cpu"), torch.float32)
    kept = dict(cache.features)
    again = cache.lookup(torch.arange(3), pixels, torch.device("cpu"), torch.float32)  # all cached here
    other_rank_missing = False
    last = cache.lookup(torch.arange(3), pixels, torch.device("cpu"), torch.float32)
    assert calls == [True, False, False]
    assert (cache.encoded, cache.reused) == (6, 6)  # the second lookup ran the tower for the other rank
    assert all(cache.features[k] is kept[k] for k in kept) and torch.equal(again, first) and torch.equal(last, first)


def test_past_the_budget_images_are_encoded_each_time(tiny):
    _, model, encoded, _ = tiny
    pixels = torch.cat([e.pixel_values for e in encoded])
    one_image = 16 * model.config.vision_config.hidden_size * 4  # fp32 bytes of one image's features
    cache = imagefeatures.ImageFeatureCache(model, budget_bytes=2 * one_image)
    first = cache.lookup(torch.arange(3), pixels, torch.device("cpu"), torch.float32)
    again = cache.lookup(torch.arange(3), pixels, torch.device("cpu"), torch.float32)
    assert sorted(cache.features) == [0, 1] and cache.bytes == 2 * one_image
    # each kept entry holds its own bytes only, not the batch tensor it was cut from
    assert all(f.untyped_storage().nbytes() == one_image for f in cache.features.values())
    assert (cache.encoded, cache.reused) == (4, 2) and torch.equal(first, again)


@pytest.mark.slow  # five short training runs: ~20 s
def test_a_run_encodes_each_image_once_and_trains_as_without_the_cache(tiny, tmp_path):
    from clipdpo.train import run
    from clipdpo.train.config import TrainConfig

    pairs = write_pairs(str(tmp_path / "data"), n_pairs=12, n_shards=2)
    losses, summaries = {}, {}
    for forward in ("concatenated", "shared_prefix"):
        for budget in (0, 64):
            cfg = TrainConfig(
                model=tiny[0],
                learning_rate=5e-3,
                global_batch_size=4,
                per_device_batch_size=2,
                max_length=50,
                warmup_ratio=0.0,
                epochs=2,
                max_steps=5,
                seed=7,
                forward=forward,
                image_feature_cache_mb=budget,
                reference_cache=str(tmp_path / f"ref-{forward}-{budget}"),
            )
            summary = run(cfg, pairs, str(tmp_path / f"{forward}-{budget}"))
            rows = Storage().read_bytes(str(tmp_path / f"{forward}-{budget}" / "metrics.jsonl")).decode().splitlines()
            losses[forward, budget] = [(r["loss"], r["rewards/margin"]) for r in map(json.loads, rows)]
            summaries[forward, budget] = summary["image_features"]
    for forward in ("concatenated", "shared_prefix"):
        assert summaries[forward, 0] == {"cached": False, "reason": "image_feature_cache_mb=0"}
        # 12 images encoded by the reference pass; the 5 steps x 4 pairs (into a second epoch) reuse them
        assert summaries[forward, 64] == {"cached": True, "encoded": 12, "reused": 20, "kept": 12, "kept_mib": 0.0}
        assert abs(losses[forward, 0][-1][1]) > 1e-3  # the policy has moved
        # fp32 through 5 optimizer steps (see above): 1e-5
        np.testing.assert_allclose(losses[forward, 64], losses[forward, 0], rtol=1e-5, atol=1e-5)
    # a trainable tower: the run encodes on every use and says why
    cfg = TrainConfig(
        model=tiny[0],
        global_batch_size=4,
        per_device_batch_size=2,
        max_length=50,
        max_steps=1,
        freeze_vision_tower=False,
        reference_cache=str(tmp_path / "ref-trainable"),
    )
    summary = run(cfg, pairs, str(tmp_path / "trainable"))
    assert summary["image_features"]["cached"] is False
    assert "the vision tower trains" in summary["image_features"]["reason"]
