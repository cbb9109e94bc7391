"""POVID's noisy-image path (Eq. 4, 5) on tiny Qwen2.5-VL and Qwen3-VL: each image's patches noised, the
joint forward of the pairs' rows and the noisy rows scoring each row as it scores alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_povid_train import RecordingPolicy
from test_qwen_vl import tiny  # noqa: F401  (the module's fixture: unit-scale models, pairs of three image sizes)
from unit_scale import reinit_at_unit_scale

from clipdpo.train.data import collate
from clipdpo.train.layouts import Concatenated, model_logits
from clipdpo.train.logps import IGNORE_INDEX
from clipdpo.train.objective import DPOObjective
from clipdpo.train.povid import POVIDObjective, chosen_images, image_frames, noised_images
from clipdpo.train.povid_loss import povid_loss

CPU = torch.device("cpu")
POSITIONS, STEP, SEED, K = np.array([4, 0, 9]), 3, 7, 500


def test_each_images_patches_are_noised_once_per_pixel(tiny):
    _, model, encoded, pad = tiny
    images = chosen_images(collate(encoded, pad), len(encoded))
    grid, frames = images["image_grid_thw"], image_frames(model)
    assert frames == 2 and len(images["pixel_values"]) == int(grid.prod(-1).sum())
    noised = noised_images(images["pixel_values"], POSITIONS, STEP, K, SEED, grid, frames)
    assert noised.shape == images["pixel_values"].shape
    clean = images["pixel_values"].reshape(len(noised), 3, frames, -1)
    by_frame = noised.reshape(len(noised), 3, frames, -1)
    assert torch.equal(clean[:, :, 0], clean[:, :, 1])  # a still image: its two frames are copies
    assert torch.equal(by_frame[:, :, 0], by_frame[:, :, 1])  # and stay copies once noised
    assert (noised - images["pixel_values"]).abs().mean() > 0.1
    # seeded by (seed, step, pair), whatever the batch: the last pair alone gets its patches' same noise
    last = int(grid[-1].prod())
    alone = noised_images(images["pixel_values"][-last:], POSITIONS[-1:], STEP, K, SEED, grid[-1:], frames)
    assert torch.equal(alone, noised[-last:])


def stage2_losses_and_by_hand(model, reference, encoded, pad):
    """POVID's stage-2 losses on one micro-batch, and the same built here row by row (test_povid_train.py's
    check for LLaVA): the noised images, the policy's argmax answers on them after each chosen token, each
    row's log-probs on its own."""
    batch, layout, n = collate(encoded, pad), Concatenated(), len(encoded)
    objective = POVIDObjective(
        DPOObjective("sigmoid", 0.1, 0.0, reference_model=reference, layout=layout),
        stage2_start=0,
        alpha=0.3,
        beta_1=0.1,
        beta_2=0.2,
        noise_step=K,
        noisy_every=1,
        seed=SEED,
        image_frames=image_frames(model),
    )
    policy = RecordingPolicy(model, layout)
    with torch.no_grad():
        losses = objective.losses(policy, batch, POSITIONS, STEP)[0]
        images = chosen_images(batch, n)
        noisy = {key: batch[key][:n] for key in ("input_ids", "attention_mask", "labels")}
        noisy["pixel_values"] = noised_images(
            images["pixel_values"], POSITIONS, STEP, K, SEED, images["image_grid_thw"], 2
        )
        noisy["image_grid_thw"] = images["image_grid_thw"]
        logits = model_logits(model, noisy, CPU, torch.float32)
        answer = noisy["labels"][:, 1:] != IGNORE_INDEX
        noisy["input_ids"] = noisy["input_ids"].clone()
        noisy["input_ids"][:, 1:][answer] = logits[:, :-1].argmax(-1)[answer]
        noisy["labels"] = torch.where(noisy["labels"] != IGNORE_INDEX, noisy["input_ids"], IGNORE_INDEX)
        ratios = [
            torch.cat([layout.logps(m, batch, CPU, torch.float32)[0], layout.logps(m, noisy, CPU, torch.float32)[0]])
            for m in (model, reference)
        ]
        ratio = ratios[0] - ratios[1]
        by_hand = povid_loss(ratio[:n], ratio[n : 2 * n], ratio[2 * n :], alpha=0.3, beta_1=0.1, beta_2=0.2)[0]
    (joint,) = policy.batches  # one forward of the pairs' rows and the noisy rows together
    assert joint["input_ids"].shape[0] == 3 * n and len(joint["image_grid_thw"]) == 3 * n
    assert (noisy["input_ids"] != batch["input_ids"][:n])[:, 1:][answer].any()  # the model's own answers
    # (an answer holding the image placeholder would be refused by the model's forward: these hold none)
    assert not (noisy["input_ids"] == model.config.image_token_id)[:, 1:][answer].any()
    return losses, by_hand, ratio


@pytest.fixture(scope="module")
def reference(tiny):
    from transformers import AutoModelForImageTextToText

    # another reference than the policy, so that the log-ratios are not all zero
    return reinit_at_unit_scale(AutoModelForImageTextToText.from_pretrained(tiny[0]), seed=3).eval()


def test_the_joint_rows_give_each_rows_own_log_probs(tiny, reference):
    _, model, encoded, pad = tiny
    losses, by_hand, ratio = stage2_losses_and_by_hand(model, reference, encoded, pad)
    assert ratio.abs().min() > 0.1
    # fp32 log-prob sums of |x| < 200 in another batch shape: inside 1e-5 relative (test_povid_train.py)
    assert torch.allclose(losses, by_hand, rtol=1e-5, atol=1e-6), (losses - by_hand).abs().max()


def test_the_joint_rows_check_fails_when_the_noisy_rows_see_the_clean_image(tiny, reference, monkeypatch):
    from clipdpo.train import povid

    _, model, encoded, pad = tiny
    monkeypatch.setattr(povid, "noised_images", lambda pixel_values, *args: pixel_values)
    losses, by_hand, _ = stage2_losses_and_by_hand(model, reference, encoded, pad)
    tolerance = 1e-6 + 1e-5 * by_hand.abs()
    assert ((losses - by_hand).abs() / tolerance).max() > 100, (losses - by_hand).abs().max()


@pytest.mark.slow  # a training run of 4 steps: ~10 s
def test_a_two_stage_run_makes_and_trains_on_noisy_answers(tiny, tmp_path):
    import json

    from pairs_fixture import write_pairs
    from test_povid_train import povid_config

    from clipdpo import train
    from clipdpo.storage import Storage

    pairs = write_pairs(str(tmp_path / "data"), n_pairs=8, n_shards=2)
    output = str(tmp_path / "povid")
    # 8 pairs // 4 = 2 steps per stage; the unit-scale weights' answers hold no image placeholder
    train.run(povid_config(tiny[0], global_batch_size=4, per_device_batch_size=2, max_length=128), pairs, output)
    rows = [json.loads(line) for line in Storage().read_bytes(f"{output}/metrics.jsonl").decode().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    made = json.loads(Storage().read_bytes(f"{output}/train_summary.json"))["povid_rank0"]
    assert made["noisy_answers_made"] == 8 and 0 < made["noisy_tokens_changed_fraction"] <= 1
