"""Training runs for the train tests: the CLI in one process or under torchrun (tests/train_entry.py adds the
test-only kill switch), the metrics a run logged, and how two runs must compare (bit for bit after a resume,
up to reordered-sum rounding across world sizes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from clipdpo.storage import Storage, join


def metrics(storage: Storage, output: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(join(output, "metrics.jsonl")).decode().splitlines()]


ENTRY = os.path.join(os.path.dirname(__file__), "train_entry.py")  # python -m clipdpo.train + test-only hooks
# (--kill-after-step N, no DeepSpeed shm op build)
DEEPSPEED = ["--set", "strategy=deepspeed", "--set", "zero_stage=3"]


def tiny_train_settings(model: str, **changes) -> dict:
    """The tiny LLaVA's training settings the tests share (lr 5e-3, global batch 8 of 4, 64 tokens, one epoch, a
    checkpoint every step, seed 7), with `changes` over them (the keys keep their order)."""
    return {
        "model": model,
        "learning_rate": 5e-3,
        "global_batch_size": 8,
        "per_device_batch_size": 4,
        "max_length": 64,
        "warmup_ratio": 0.0,
        "epochs": 1,
        "save_steps": 1,
        "seed": 7,
        **changes,
    }


def cli(
    model: str, pairs: str, output: str, extra: list[str], nproc: int = 1, env: dict | None = None
) -> subprocess.CompletedProcess:
    sets = tiny_train_settings(model, per_device_batch_size=2, epochs=2, save_steps=2)
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + extra
    launcher = (
        [sys.executable, ENTRY]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", ENTRY]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        launcher + ["--input", pairs, "--output", output] + args, capture_output=True, text=True, env=env, timeout=600
    )


def trained_weights(model_dir: str) -> dict[str, torch.Tensor]:
    """Weights as loaded by transformers (the class the checkpoint's config names: LLaVA, Qwen VL): ZeRO-3's
    gathered state dict is saved under other (loadable) key names."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


def assert_bit_identical_training(got: str, want: str) -> None:
    """Resume exactness. Same world size and strategy: every floating-point operation is the same one, in the
    same order, on the same inputs (weights, optimizer moments, scheduler step, RNG and data order all
    restored), so a resumed run is bit-identical to an uninterrupted one on any CPU: no tolerance."""
    storage = Storage()
    losses_got, losses_want = [r["loss"] for r in metrics(storage, got)], [r["loss"] for r in metrics(storage, want)]
    w_got, w_want = trained_weights(os.path.join(got, "model")), trained_weights(os.path.join(want, "model"))
    assert set(w_got) == set(w_want)
    differing = [k for k in w_want if not torch.equal(w_got[k], w_want[k])]
    difference = math.sqrt(sum(float((w_got[k] - w_want[k]).double().pow(2).sum()) for k in differing))
    assert losses_got == losses_want and not differing, (
        f"resumed run differs from the uninterrupted one: losses {losses_got} vs {losses_want}; "
        f"{len(differing)} weight tensor(s) differ, |W_resumed - W_uninterrupted| = {difference:.3g}"
    )


# Strategy equivalence (2 processes vs 1). Both runs see the same micro-batches (2 pairs each, the same padding),
# so forwards and backwards are bit-identical; only the reduction of the 4 micro-batch gradients per step is
# ordered differently (((g1+g2)+g3)+g4 in one process; (g1+g2) and (g3+g4) per rank, then an all-reduce or
# ZeRO-3's reduce-scatter). That costs a few fp32 roundings, ~4 * 2**-24 = 2.4e-7 relative, per gradient element
# per step. Adam divides each coordinate by its own RMS, which amplifies the rounding in coordinates whose
# micro-batch gradients nearly cancel, and each later step carries the difference forward. Measured on the tiny
# model after 6 steps (lr 5e-3): ||W_2proc - W_1proc|| / ||W_1proc - W_0|| = 3.3e-6 (DDP) and 1.7e-5 (ZeRO-3), i.e.
# 14x and 70x the per-step rounding; per element the largest difference is 2.7e-5 against updates of up to 1.8e-2,
# which is why a bare atol of 1e-5 on elements failed on other CPUs. The tolerance on that relative update
# difference is 1e-3: 60x above the worst measured rounding, and far below what a real fault does (skipping the
# optimizer-state restore on resume moves it by 4e-1, replaying
# the resumed steps' batches in another order by 1.2e-2; a lost or double-counted micro-batch changes a step's
# gradient by ~25%).
UPDATE_RTOL = 1e-3


def assert_same_training_up_to_rounding(got: str, want: str, base_model: str) -> None:
    storage = Storage()
    got_rows, want_rows = metrics(storage, got), metrics(storage, want)
    assert [r["step"] for r in got_rows] == [r["step"] for r in want_rows]
    w0 = trained_weights(base_model)
    w_got, w_want = trained_weights(os.path.join(got, "model")), trained_weights(os.path.join(want, "model"))
    assert set(w_got) == set(w_want) == set(w0)
    difference = math.sqrt(sum(float((w_got[k] - w_want[k]).double().pow(2).sum()) for k in w0))
    update = math.sqrt(sum(float((w_want[k] - w0[k]).double().pow(2).sum()) for k in w0))
    assert update > 0.1  # the runs trained (the tiny model's update is ~2)
    assert difference <= UPDATE_RTOL * update, f"weights differ by {difference / update:.3g} of the update"
    # A step's loss moves by at most |grad| * |weight difference| to first order; the weight difference before any
    # step is at most the final one's bound (UPDATE_RTOL * update); 2x for the second-order term.
    for a, b in zip(got_rows, want_rows):
        bound = 2 * max(a["grad_norm"], b["grad_norm"]) * UPDATE_RTOL * update
        assert abs(a["loss"] - b["loss"]) <= bound, (a["step"], a["loss"], b["loss"], bound)
        assert abs(a["rewards/margin"] - b["rewards/margin"]) <= bound, (a["step"], a, b)
        # Adam is scale-invariant, so gradients summed instead of averaged over ranks would leave the weights
        # alone; the logged gradient norm shows it (2x). Measured relative differences: <= 4e-6.
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=UPDATE_RTOL), (a["step"], a, b)
