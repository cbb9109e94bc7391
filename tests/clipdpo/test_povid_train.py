"""POVID in the train stage: noisy-image rejections, the two-stage schedule, the beta_2 = 0 ablation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pairs_fixture import write_pairs
from train_runs import DEEPSPEED, assert_bit_identical_training, assert_same_training_up_to_rounding, cli, metrics
from unit_scale import build_unit_scale_llava, reinit_at_unit_scale

from clipdpo import train
from clipdpo.demo.models import build_tiny_llava
from clipdpo.storage import Storage, join
from clipdpo.train.config import PovidTrainConfig, TrainConfig
from clipdpo.train.logps import IGNORE_INDEX
from clipdpo.train.povid import noised_images, teacher_forced_answers
from clipdpo.train.recipe import check_config

# This module's tests, test_train_e2e.py's and test_trainjob.py's torchrun check are one xdist group (one worker,
# one test after another): never two 2-rank training jobs at once on 2 cores (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("two-process")


def test_teacher_forced_answer_is_the_argmax_after_the_preferred_prefix():
    # sequence: [prompt 5, prompt 6, answer 7, answer 8, pad 0]; vocabulary of 10
    # logits at t = 1 argmax 3 -> replaces the answer token at t = 2; at t = 2 argmax 9 -> replaces t = 3;
    # the prompt (t = 0, 1) and the padding (t = 4) keep their ids whatever the logits say
    input_ids = torch.tensor([[5, 6, 7, 8, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    logits = torch.zeros(1, 5, 10)
    for t, best in enumerate([1, 3, 9, 2, 4]):
        logits[0, t, best] = 1.0
    assert teacher_forced_answers(logits, input_ids, labels).tolist() == [[5, 6, 3, 9, 0]]


def test_noised_images_are_seeded_by_run_step_and_pair():
    pixels = torch.zeros(2, 3, 4, 4)
    a = noised_images(pixels, np.array([3, 4]), step=5, k=500, seed=7)
    assert torch.equal(a, noised_images(pixels, np.array([3, 4]), step=5, k=500, seed=7))
    assert not torch.equal(a[0], a[1])  # two pairs, two draws
    assert not torch.equal(a, noised_images(pixels, np.array([3, 4]), step=6, k=500, seed=7))
    assert torch.equal(a[1], noised_images(pixels[:1], np.array([4]), step=5, k=500, seed=7)[0])  # batch-independent


def test_povid_needs_a_reference_model_and_the_sigmoid_loss():
    with pytest.raises(ValueError, match="reference=model"):
        check_config(TrainConfig(method="povid", global_batch_size=8, per_device_batch_size=4), 1)
    with pytest.raises(ValueError, match="loss_type=sigmoid"):
        check_config(
            TrainConfig(
                method="both", reference="model", loss_type="ipo", global_batch_size=8, per_device_batch_size=4
            ),
            1,
        )
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="rlhf")
    with pytest.raises(ValueError, match="stage1_epochs"):
        TrainConfig(method="povid", epochs=3)
    with pytest.raises(ValueError, match="noise_step"):
        PovidTrainConfig(noise_step=1000)
    with pytest.raises(ValueError, match="noisy_every"):
        PovidTrainConfig(noisy_every=0)


def test_povid_settings_are_one_nested_config():
    """`train.povid.*`: read from JSON as a nested object, a misspelt key refused with its path, set by `--set`."""
    from clipdpo import config as config_lib

    cfg = config_lib.from_dict(
        TrainConfig,
        config_lib.apply_overrides({"method": "povid", "povid": {"stage1_epochs": 2}}, ["povid.beta_2=0.3"]),
    )
    assert cfg.povid == PovidTrainConfig(stage1_epochs=2, beta_2=0.3)  # the others keep their defaults
    with pytest.raises(config_lib.ConfigError, match=r"config\.povid: unknown key\(s\) \['alpah'\]"):
        config_lib.from_dict(TrainConfig, {"povid": {"alpah": 0.2}})
    with pytest.raises(config_lib.ConfigError, match=r"unknown key\(s\) \['povid_beta_2'\]"):  # the flat name is gone
        config_lib.from_dict(TrainConfig, {"povid_beta_2": 0.0})
    with pytest.raises(ValueError, match="PovidTrainConfig"):  # in Python, the class, not a dict
        TrainConfig(povid={"beta_2": 0.0})


def test_the_output_fingerprint_sees_povid_settings_under_their_flat_names():
    """Grouping POVID's settings changed no run's fingerprint: they enter it under the flat names they had.
    The two values were computed by the flat TrainConfig (commit d9655dd), then again when `rpo_alpha` was added:
    a new TrainConfig field changes them, as it changes every run's fingerprint."""
    from types import SimpleNamespace

    from clipdpo.train.recipe import output_fingerprint, semantic_config

    pairs = SimpleNamespace(manifest=SimpleNamespace(fingerprint="pairs-fingerprint"))
    povid = TrainConfig(
        method="povid", reference="model", povid=PovidTrainConfig(stage1_epochs=1, beta_2=0.0, noise_step=400)
    )
    flat_default = "968073f273877ced6f3d12dddcda512ab431005b2a0f3e333b2b7962167f826e"
    flat_povid = "7215757cda312ebc82c20b235a95858991465722a923cc69a847d0496b89f377"
    assert (output_fingerprint(TrainConfig(), pairs), output_fingerprint(povid, pairs)) == (flat_default, flat_povid)
    semantic = semantic_config(povid)
    assert "povid" not in semantic and (semantic["povid_beta_2"], semantic["noise_step"]) == (0.0, 400)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    return build_tiny_llava(str(tmp_path_factory.mktemp("models") / "tiny-llava"))


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> str:
    return write_pairs(str(tmp_path_factory.mktemp("data")), n_pairs=24, n_shards=2)


def povid_config(model: str, povid: dict | None = None, **overrides) -> TrainConfig:
    values = dict(
        model=model,
        learning_rate=5e-3,
        global_batch_size=8,
        per_device_batch_size=4,
        max_length=64,
        warmup_ratio=0.0,
        save_steps=2,
        seed=7,
        reference="model",
        method="povid",
    )
    values.update(overrides)
    stages = dict(stage1_epochs=1, stage2_epochs=1, alpha=0.1, beta_1=0.1, beta_2=0.1, noise_step=500)
    return TrainConfig(**values, povid=PovidTrainConfig(**{**stages, **(povid or {})}))


POVID_EXAMPLES = [
    ((200, 10, 10), "describe the image", "a dog on a red sofa", "a cat"),
    ((10, 200, 10), "what is in this picture ?", "two people walking in the park", "a rocket"),
    ((10, 10, 200), "hi", "a man", "a woman holding a cup of coffee in the kitchen"),
]


class RecordingPolicy:
    """The backend's two calls on one model, recording the batches whose log-probs were asked for."""

    def __init__(self, model, layout):
        self.model, self.layout, self.batches = model, layout, []

    def forward(self, batch: dict) -> torch.Tensor:
        from clipdpo.train.layouts import model_logits

        return model_logits(self.model, batch, torch.device("cpu"), torch.float32)

    def logps(self, batch: dict):
        self.batches.append(batch)
        return self.layout.logps(self.model, batch, torch.device("cpu"), torch.float32)


def stage2_losses_and_by_hand(path: str):
    """POVID's stage-2 losses on one micro-batch, and the same losses from each row run on its own: the pairs'
    rows as a DPO batch, and (noised image, the policy's argmax answer after each chosen token) built here."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from clipdpo.train.data import collate
    from clipdpo.train.encode import PairEncoder
    from clipdpo.train.layouts import Concatenated
    from clipdpo.train.logps import sequence_logps
    from clipdpo.train.objective import DPOObjective
    from clipdpo.train.povid import POVIDObjective
    from clipdpo.train.povid_loss import povid_loss

    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(path)
    policy_model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    # another reference than the policy, so that the log-ratios are not all zero
    reference = reinit_at_unit_scale(LlavaForConditionalGeneration.from_pretrained(path), seed=3).eval()
    encoded = PairEncoder(processor, max_length=64).encode_batch(
        [(Image.new("RGB", (40, 40), rgb), *texts) for rgb, *texts in POVID_EXAMPLES], True
    )
    batch, layout, n = collate(encoded, processor.tokenizer.pad_token_id), Concatenated(), len(encoded)
    positions, step, seed, k = np.array([4, 0, 9]), 3, 7, 500
    objective = POVIDObjective(
        DPOObjective("sigmoid", 0.1, 0.0, reference_model=reference, layout=layout),
        stage2_start=0,
        alpha=0.3,
        beta_1=0.1,
        beta_2=0.2,
        noise_step=k,
        noisy_every=1,
        seed=seed,
    )
    policy = RecordingPolicy(policy_model, layout)
    with torch.no_grad():
        losses = objective.losses(policy, batch, positions, step)[0]
        # by hand: the noised images, the argmax answers on them after each chosen token, then each row alone
        chosen = {key: batch[key][:n] for key in ("input_ids", "attention_mask", "labels")}
        noised = noised_images(batch["pixel_values"][:n], positions, step, k, seed)
        logits = policy_model(
            input_ids=chosen["input_ids"], attention_mask=chosen["attention_mask"], pixel_values=noised
        ).logits
        answer = chosen["labels"][:, 1:] != IGNORE_INDEX
        noisy_ids = chosen["input_ids"].clone()
        noisy_ids[:, 1:][answer] = logits[:, :-1].argmax(-1)[answer]
        noisy_labels = torch.where(chosen["labels"] != IGNORE_INDEX, noisy_ids, IGNORE_INDEX)
        ratios = []
        for model in (policy_model, reference):
            pairs = layout.logps(model, batch, torch.device("cpu"), torch.float32)[0]
            noisy = sequence_logps(
                model(input_ids=noisy_ids, attention_mask=chosen["attention_mask"], pixel_values=noised).logits,
                noisy_labels,
            )[0]
            ratios.append(torch.cat([pairs, noisy]))
        ratio = ratios[0] - ratios[1]
        by_hand = povid_loss(ratio[:n], ratio[n : 2 * n], ratio[2 * n :], alpha=0.3, beta_1=0.1, beta_2=0.2)[0]
    assert len(policy.batches) == 1 and policy.batches[0]["input_ids"].shape[0] == 3 * n  # one joint forward
    assert (noisy_ids != chosen["input_ids"])[:, 1:][answer].any()  # the answers are the model's own, not y_w
    # (random weights may argmax the image placeholder, which LLaVA's forward refuses as an extra image slot:
    # the seed of `unit_llava` is one whose answers here hold none)
    assert not (noisy_ids == policy_model.config.image_token_index)[:, 1:][answer].any()
    return losses, by_hand, ratio


@pytest.fixture(scope="module")
def unit_llava(tmp_path_factory) -> str:
    return build_unit_scale_llava(str(tmp_path_factory.mktemp("models") / "unit-llava"), seed=2)


def test_the_joint_rows_give_each_rows_own_log_probs(unit_llava):
    """The pairs' rows and the noisy rows in one forward (Eq. 5) score as each row does alone, on weights at
    O(1) scale (unit_scale.py): there a row scored on the wrong image or answer moves a log-prob by nats."""
    losses, by_hand, ratio = stage2_losses_and_by_hand(unit_llava)
    assert ratio.abs().min() > 0.1  # log-ratios that mean something (policy and reference differ)
    # fp32 log-prob sums of |x| < 100 in another batch shape: a few ulps, inside 1e-5 relative
    assert torch.allclose(losses, by_hand, rtol=1e-5, atol=1e-6), (losses - by_hand).abs().max()


def test_the_joint_rows_check_fails_when_the_noisy_rows_see_the_clean_image(unit_llava, monkeypatch):
    from clipdpo.train import povid

    monkeypatch.setattr(povid, "noised_images", lambda pixel_values, *args: pixel_values)
    losses, by_hand, _ = stage2_losses_and_by_hand(unit_llava)
    tolerance = 1e-6 + 1e-5 * by_hand.abs()
    assert ((losses - by_hand).abs() / tolerance).max() > 100, (losses - by_hand).abs().max()


@pytest.mark.slow  # three training runs on the tiny LLaVA: ~40 s
def test_two_stages_and_the_beta2_zero_ablation(tiny_llava, pairs_dir, tmp_path):
    storage = Storage()
    runs = {name: str(tmp_path / name) for name in ("povid", "text_only", "clipdpo")}
    train.run(povid_config(tiny_llava), pairs_dir, runs["povid"])
    train.run(povid_config(tiny_llava, povid={"beta_2": 0.0}), pairs_dir, runs["text_only"])
    train.run(povid_config(tiny_llava, method="clipdpo", epochs=2), pairs_dir, runs["clipdpo"])
    povid, text_only = metrics(storage, runs["povid"]), metrics(storage, runs["text_only"])
    assert [r["step"] for r in povid] == list(range(1, 7))  # 24 pairs // 8 = 3 steps x (1 + 1) stage epochs
    # stage 1 is the same DPO in both runs (the same operations: bit-identical); stage 2 adds the noisy term
    assert [r["loss"] for r in povid[:3]] == [r["loss"] for r in text_only[:3]]
    assert all(a["loss"] != b["loss"] for a, b in zip(povid[3:], text_only[3:]))
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in povid)
    # beta_2 = 0 (alpha = beta_1 = beta) is stage-1-only training: the same run as DPO for both epochs, up to the
    # rounding of alpha*c - beta_1*t against beta*(c - t)
    assert_same_training_up_to_rounding(runs["text_only"], runs["clipdpo"], tiny_llava)
    summary = json.loads(storage.read_bytes(join(runs["povid"], "train_summary.json")))
    assert summary["config"]["method"] == "povid" and summary["steps"] == 6
    # stage 2: 3 steps x 8 pairs, each pair's noisy answer made once (noisy_every = 1, one process)
    made = summary["povid_rank0"]
    assert made["noisy_answers_made"] == 24 and made["noisy_answer_tokens"] > 24
    assert 0 < made["noisy_tokens_changed_fraction"] <= 1
    assert (
        json.loads(storage.read_bytes(join(runs["text_only"], "train_summary.json")))["povid_rank0"][
            "noisy_answers_made"
        ]
        == 0
    )  # beta_2 = 0: nothing generated


# with cli()'s settings: 3 steps per epoch, micro-batches of 2 pairs
POVID_SETS = [
    "--set",
    "epochs=1",
    "--set",
    "method=povid",
    "--set",
    "reference=model",
    "--set",
    "povid.stage1_epochs=1",
    "--set",
    "povid.stage2_epochs=1",
]


@pytest.fixture(scope="module")
def povid_one_process(tiny_llava, pairs_dir, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("runs") / "povid-single")
    result = cli(tiny_llava, pairs_dir, output, POVID_SETS)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.slow  # two CLI runs
def test_povid_killed_in_stage_2_resumes_to_the_uninterrupted_result(
    tiny_llava, pairs_dir, povid_one_process, tmp_path
):
    # Killed after step 5 (stage 2 runs steps 4-6; last checkpoint: step 4): the resumed run redoes step 5,
    # regenerating its noisy answers from the restored weights and the (seed, step, pair) noise, so it is the
    # same run (noisy_every = 1: no answer is reused, so none is lost with the process).

    output = str(tmp_path / "killed")
    killed = cli(tiny_llava, pairs_dir, output, POVID_SETS + ["--kill-after-step", "5"])
    assert killed.returncode != 0 and "SIGKILL after step 5" in killed.stderr
    resumed = cli(tiny_llava, pairs_dir, output, POVID_SETS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "(step 4)" in resumed.stderr
    assert_bit_identical_training(output, povid_one_process)


@pytest.mark.slow  # DeepSpeed on 2 processes
def test_povid_noisy_path_under_zero3_on_two_processes_trains_like_one_process(
    tiny_llava, pairs_dir, povid_one_process, tmp_path
):
    # The teacher-forced noisy answer is an ordinary forward of the ZeRO-3 policy (parameters gathered by
    # DeepSpeed's hooks), the reference a ZeRO-3 inference engine; same micro-batches, same seeded noise.
    output = str(tmp_path / "zero3")
    result = cli(tiny_llava, pairs_dir, output, POVID_SETS + DEEPSPEED, nproc=2, env={"DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(Storage().read_bytes(join(output, "train_summary.json")))
    assert summary["strategy"] == "deepspeed" and summary["world_size"] == 2 and summary["steps"] == 6
    assert_same_training_up_to_rounding(output, povid_one_process, tiny_llava)


@pytest.mark.slow  # two torchrun processes
def test_povid_noisy_path_under_ddp_on_two_processes_trains_like_one_process(
    tiny_llava, pairs_dir, povid_one_process, tmp_path
):
    # The gradient-free teacher-forced forward runs through the DDP wrapper on every rank alike (its buffer
    # broadcast is a collective: the same count of forwards on each rank keeps them matched).
    output = str(tmp_path / "ddp")
    result = cli(tiny_llava, pairs_dir, output, POVID_SETS, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(Storage().read_bytes(join(output, "train_summary.json")))
    assert summary["strategy"] == "ddp" and summary["world_size"] == 2 and summary["steps"] == 6
    assert_same_training_up_to_rounding(output, povid_one_process, tiny_llava)
