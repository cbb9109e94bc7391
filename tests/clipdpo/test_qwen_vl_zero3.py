"""Qwen2.5-VL and Qwen3-VL on the cluster path: DeepSpeed ZeRO-3 on 2 gloo processes trains like 1 process.

As test_train_e2e.py's LLaVA check: the same pairs and micro-batches through the stage's command line, once on
1 process (DDP strategy) and once under ZeRO-3 on 2 (parameters partitioned, gathered by DeepSpeed's hooks for
each forward, partitioned checkpoints, the gathered state dict saved at the end); forward=auto, which takes the
shared prefix with Qwen's multimodal rotary positions. The weights and each step's loss must agree up to the
rounding of reordered gradient sums (train_runs.UPDATE_RTOL). Full fine-tuning only: the stage refuses LoRA under
ZeRO-3 for every model (recipe.check_config), so the LLaVA test has no LoRA case either.
"""

from __future__ import annotations

import json

import pytest
from pairs_fixture import write_pairs
from tiny_qwen import build_tiny_qwen
from train_runs import DEEPSPEED, assert_same_training_up_to_rounding, cli, metrics

from clipdpo.storage import Storage, join

# With test_train_e2e.py's 2-rank jobs: one at a time on 2 cores (tests/conftest.py)
pytestmark = pytest.mark.xdist_group("two-process")

# 24 pairs of 40x40 images (25 image tokens; the template's default system turn and the prompt make ~90 tokens):
# 3 steps of 8 a epoch, 6 in all, the step count the LLaVA check's tolerance was measured at
LONGER = ["--set", "max_length=128"]
N_PAIRS = 24


@pytest.mark.slow(seconds=80)  # a 1-process run and a DeepSpeed run on 2 processes
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_deepspeed_zero3_on_two_cpu_processes_trains_like_one_process(family, tmp_path):
    model = build_tiny_qwen(str(tmp_path / family), family)
    pairs = write_pairs(str(tmp_path / "data"), n_pairs=N_PAIRS, n_shards=2)
    runs = {}
    for name, extra, nproc, env in (("single", [], 1, {}), ("zero3", DEEPSPEED, 2, {"DS_ACCELERATOR": "cpu"})):
        runs[name] = str(tmp_path / name)
        # each run its own reference pass (under ZeRO-3: a no-grad forward through the partitioned engine)
        own_reference = ["--set", f"reference_cache={tmp_path / name}-refcache"]
        result = cli(model, pairs, runs[name], LONGER + own_reference + extra, nproc=nproc, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "reference log-probs: reusing" not in result.stderr
    summary = json.loads(Storage().read_bytes(join(runs["zero3"], "train_summary.json")))
    assert (summary["strategy"], summary["world_size"], summary["forward"]) == ("deepspeed", 2, "shared_prefix")
    assert len(metrics(Storage(), runs["zero3"])) == 6
    assert_same_training_up_to_rounding(runs["zero3"], runs["single"], model)
