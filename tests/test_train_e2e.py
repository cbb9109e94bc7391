"""The train stage end to end on a tiny LLaVA built from a config, on CPU.

Covers: learning the preference, 2 processes (gloo) == 1 process, kill + resume == uninterrupted,
bad pairs by row id, truncation that keeps image tokens, reference cache reuse, reference model
mode == precomputed reference, LoRA outputs, frozen vision tower.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from clipdpo.storage import Storage, join
from clipdpo.tiny import build_tiny_llava
from clipdpo.training.config import TrainConfig
from clipdpo.training.data import BadPairsError, build_index
from clipdpo.training.encode import PairEncoder
from clipdpo.training.loop import train

sys.path.insert(0, os.path.dirname(__file__))
from pairs_fixture import write_pairs  # noqa: E402

BAD = {3: "empty_chosen", 7: "missing_image", 9: "long_prompt"}


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    return build_tiny_llava(str(tmp_path_factory.mktemp("models") / "tiny-llava"))


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> str:
    return write_pairs(str(tmp_path_factory.mktemp("data")), n_pairs=32, n_shards=2, bad_rows=BAD)


def config(model: str, **overrides) -> TrainConfig:
    values = dict(model=model, learning_rate=5e-3, global_batch_size=8, per_device_batch_size=4, max_length=64,
                  warmup_ratio=0.0, epochs=2, save_steps=2, seed=7)
    values.update(overrides)
    return TrainConfig(**values)


def metrics(storage: Storage, output: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(join(output, "metrics.jsonl")).decode().splitlines()]


def cli(model: str, pairs: str, output: str, extra: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    sets = {"model": model, "learning_rate": 5e-3, "global_batch_size": 8, "per_device_batch_size": 2,
            "max_length": 64, "warmup_ratio": 0.0, "epochs": 2, "save_steps": 2, "seed": 7}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + extra
    launcher = [sys.executable, "-m", "clipdpo.train"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "clipdpo.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(launcher + ["--input", pairs, "--output", output] + args, capture_output=True, text=True,
                          env=env, timeout=600)


def test_tiny_llava_learns_the_preference_through_s3(tiny_llava, bucket, capsys):
    storage = Storage()
    pairs = write_pairs(join(bucket, "data"), n_pairs=32, n_shards=2, bad_rows=BAD)
    output = join(bucket, "model")
    summary = train(config(tiny_llava, epochs=4, save_steps=3), pairs, output)
    rows = metrics(storage, output)
    assert [r["step"] for r in rows] == list(range(1, 13))  # 29 good pairs // 8 = 3 steps x 4 epochs
    # step 1: the policy is the reference, so h = 0 and the loss is log 2 (checks the reference cache lines up)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    last_epoch = rows[-3:]
    accuracy = sum(r["rewards/accuracy"] for r in last_epoch) / 3
    margins = [r["rewards/margin"] for r in rows]
    with capsys.disabled():
        print(f"\n[train] reward accuracy last epoch {accuracy:.3f}; margin step 1 {margins[0]:.4f} -> "
              f"step 12 {margins[-1]:.4f}; loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}")
    assert accuracy > 0.8
    assert margins[-1] > margins[1] > 0
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert summary["data"] == {"pairs_good": 29, "pairs_truncated": 0, "pairs_bad_empty_chosen": 1,
                               "pairs_bad_missing_image": 1, "pairs_bad_prompt_too_long": 1}
    for key in ("lr", "samples_per_s", "tokens_per_s", "rewards/chosen", "rewards/rejected", "grad_norm"):
        assert key in rows[-1]
    assert rows[-1]["lr"] == 0.0  # cosine to zero
    # the model is a loadable Hugging Face checkpoint; frozen vision tower unchanged, projector trained
    local = os.path.join(os.path.dirname(tiny_llava), "downloaded")
    for uri in storage.list(join(output, "model")):
        storage.download_file(uri, os.path.join(local, uri[len(join(output, "model")) + 1:]))
    trained, base = load_file(os.path.join(local, "model.safetensors")), load_file(os.path.join(tiny_llava, "model.safetensors"))
    vision = [k for k in base if "vision_tower" in k]
    projector = [k for k in base if "multi_modal_projector" in k]
    assert vision and projector
    assert all(torch.equal(trained[k], base[k]) for k in vision)
    assert any(not torch.equal(trained[k], base[k]) for k in projector)
    from transformers import LlavaForConditionalGeneration

    LlavaForConditionalGeneration.from_pretrained(local)
    # idempotent: the same run again does nothing and returns the stored summary
    again = train(config(tiny_llava, epochs=4, save_steps=3), pairs, output)
    assert again["fingerprint"] == summary["fingerprint"] and again["seconds"] == summary["seconds"]


@pytest.fixture(scope="module")
def one_process_run(tiny_llava, pairs_dir, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("runs") / "single")
    result = cli(tiny_llava, pairs_dir, output, [])
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_two_gloo_processes_give_the_one_process_loss_curve(tiny_llava, pairs_dir, one_process_run, tmp_path):
    output = str(tmp_path / "two")
    result = cli(tiny_llava, pairs_dir, output, [], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    storage = Storage()
    single, double = metrics(storage, one_process_run), metrics(storage, output)
    assert len(single) == len(double) == 6
    summary = json.loads(storage.read_bytes(join(output, "train_summary.json")))
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp"
    for a, b in zip(single, double):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["rewards/margin"] == pytest.approx(a["rewards/margin"], abs=1e-5)
    w1 = load_file(os.path.join(one_process_run, "model", "model.safetensors"))
    w2 = load_file(os.path.join(output, "model", "model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_llava, pairs_dir, one_process_run, tmp_path):
    output = str(tmp_path / "killed")
    killed = cli(tiny_llava, pairs_dir, output, ["--set", "debug_kill_after_step=5"])
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL after step 5; last checkpoint: step 4
    assert not os.path.exists(os.path.join(output, "train_summary.json"))
    resumed = cli(tiny_llava, pairs_dir, output, [])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step 4" in resumed.stderr
    assert "reference log-probs: reusing" in resumed.stderr
    storage = Storage()
    ref, got = metrics(storage, one_process_run), metrics(storage, output)
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], abs=1e-6)
    w_ref = load_file(os.path.join(one_process_run, "model", "model.safetensors"))
    w_got = load_file(os.path.join(output, "model", "model.safetensors"))
    assert all(torch.allclose(w_ref[k], w_got[k], atol=1e-6) for k in w_ref)


def test_reference_model_mode_matches_the_precomputed_reference(tiny_llava, pairs_dir, tmp_path):
    storage = Storage()
    runs = {}
    for mode in ("precompute", "model"):
        output = str(tmp_path / mode)
        train(config(tiny_llava, reference=mode, max_steps=3), pairs_dir, output)
        runs[mode] = metrics(storage, output)
    assert [r["loss"] for r in runs["model"]] == pytest.approx([r["loss"] for r in runs["precompute"]], abs=1e-5)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "kto_pair"])
def test_other_losses_train(tiny_llava, pairs_dir, tmp_path, loss_type):
    output = str(tmp_path / loss_type)
    train(config(tiny_llava, loss_type=loss_type, epochs=3), pairs_dir, output)
    rows = metrics(Storage(), output)
    assert rows[-1]["rewards/margin"] > rows[1]["rewards/margin"]


def test_lora_saves_adapter_and_merged_model(tiny_llava, pairs_dir, tmp_path):
    output = str(tmp_path / "lora")
    summary = train(config(tiny_llava, finetune="lora", lora_r=4, lora_alpha=8, max_steps=2), pairs_dir, output)
    assert os.path.exists(os.path.join(output, "model", "adapter", "adapter_config.json"))
    adapter_config = json.load(open(os.path.join(output, "model", "adapter", "adapter_config.json")))
    assert "language_model" in adapter_config["target_modules"]  # the vision tower's q/k/v stay untouched
    merged = load_file(os.path.join(output, "model", "merged", "model.safetensors"))
    base = load_file(os.path.join(tiny_llava, "model.safetensors"))
    assert set(merged) == set(base)
    assert all(torch.equal(merged[k], base[k]) for k in base if "vision_tower" in k)
    assert any(not torch.equal(merged[k], base[k]) for k in base if "language_model" in k and "q_proj" in k)
    assert summary["finetune"] == "lora"


def test_bad_pairs_are_named_by_row_id_and_refused_when_configured(tiny_llava, pairs_dir):
    from transformers import AutoProcessor

    from clipdpo.artifacts import Artifact

    encoder = PairEncoder(AutoProcessor.from_pretrained(tiny_llava), max_length=64)
    pairs = Artifact.open(Storage(), pairs_dir, kind="pairs")
    with pytest.raises(BadPairsError, match=r"empty_chosen: 1 \(e.g. part-00000:3\).*missing_image: 1 "
                                            r"\(e.g. part-00000:7\).*prompt_too_long: 1 \(e.g. part-00000:9\)"):
        build_index(pairs, encoder, truncate=True, on_bad_pair="error")
    index = build_index(pairs, encoder, truncate=True, on_bad_pair="skip")
    assert len(index) == 29 and "part-00000:3" not in {index.row_id(i) for i in range(len(index))}
    # a context that fits the prompt but not the responses: truncated when allowed, bad pairs otherwise
    short = PairEncoder(encoder.processor, max_length=encoder.prompt_lengths(["describe the image"])[0] + 2)
    assert build_index(pairs, short, truncate=True, on_bad_pair="skip").truncated == 29
    strict = build_index(pairs, short, truncate=False, on_bad_pair="skip")
    assert len(strict) == 0 and len(strict.bad["response_too_long"]) == 29


def test_truncation_cuts_only_the_response_never_image_tokens(tiny_llava):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava)
    full = PairEncoder(processor, max_length=512)
    prompt_len = full.prompt_lengths(["describe the image"])[0]
    encoder = PairEncoder(processor, max_length=prompt_len + 3)
    encoded = encoder.encode(Image.new("RGB", (40, 40)), "describe the image", "a dog on a red sofa", "a cat", True)
    assert len(encoded.prompt_ids) == prompt_len
    assert int((encoded.prompt_ids == encoder.image_token_id).sum()) == encoder.image_tokens == 16
    assert len(encoded.chosen_ids) == 3 and encoded.truncated
    reference = full.encode(Image.new("RGB", (40, 40)), "describe the image", "a dog on a red sofa", "a cat", True)
    assert encoded.chosen_ids.tolist() == reference.chosen_ids[:3].tolist()  # the start of the response is kept
    with pytest.raises(ValueError, match="max_length"):
        PairEncoder(processor, max_length=prompt_len).encode(Image.new("RGB", (40, 40)), "describe the image", "a", "b",
                                                             True)


def test_reference_cache_is_reused_by_a_later_run(tiny_llava, pairs_dir, tmp_path):
    storage = Storage()
    first = train(config(tiny_llava, max_steps=1), pairs_dir, str(tmp_path / "a"))
    manifest = json.loads(storage.read_bytes(join(first["reference_cache"], "manifest.json")))
    second = train(config(tiny_llava, max_steps=1, learning_rate=1e-3), pairs_dir, str(tmp_path / "b"))
    assert second["reference_cache"] == first["reference_cache"]
    assert json.loads(storage.read_bytes(join(first["reference_cache"], "manifest.json")))["created_unix"] == \
        manifest["created_unix"]
    # a different tokenisation is a different cache
    third = train(config(tiny_llava, max_steps=1, max_length=60), pairs_dir, str(tmp_path / "c"))
    assert third["reference_cache"] != first["reference_cache"]


def test_deepspeed_zero3_on_two_cpu_processes_killed_and_resumed(tiny_llava, pairs_dir, one_process_run, tmp_path,
                                                                 monkeypatch):
    """The cluster path (DeepSpeed ZeRO-3, partitioned checkpoints) on gloo: same curve and weights as DDP."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    output = str(tmp_path / "zero3")
    extra = ["--set", "strategy=deepspeed", "--set", "zero_stage=3"]
    killed = cli(tiny_llava, pairs_dir, output, extra + ["--set", "debug_kill_after_step=5"], nproc=2)
    assert killed.returncode != 0 and not os.path.exists(os.path.join(output, "train_summary.json"))
    assert "debug_kill_after_step=5" in killed.stderr
    resumed = cli(tiny_llava, pairs_dir, output, extra, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    storage = Storage()
    summary = json.loads(storage.read_bytes(join(output, "train_summary.json")))
    assert summary["strategy"] == "deepspeed" and summary["world_size"] == 2
    ref, got = metrics(storage, one_process_run), metrics(storage, output)
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], abs=1e-5)
    from transformers import LlavaForConditionalGeneration

    # compared as loaded models: ZeRO-3's gathered state dict is written under other (loadable) key names
    w_ref = LlavaForConditionalGeneration.from_pretrained(os.path.join(one_process_run, "model")).state_dict()
    w_got = LlavaForConditionalGeneration.from_pretrained(os.path.join(output, "model")).state_dict()
    assert set(w_ref) == set(w_got)
    assert all(torch.allclose(w_ref[k], w_got[k], atol=1e-5) for k in w_ref)
