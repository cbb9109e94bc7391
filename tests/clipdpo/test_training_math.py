"""Losses, log-probs, schedule and batch arithmetic against values worked out independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipdpo.train.config import TrainConfig, accumulation_steps
from clipdpo.train.data import PairIndex, epoch_order, rank_micro_batches
from clipdpo.train.logps import IGNORE_INDEX, predicting_positions, response_position_logps, sequence_logps
from clipdpo.train.loss import preference_loss
from clipdpo.train.schedule import lr_factor, warmup_steps


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Two examples: (policy chosen, policy rejected, ref chosen, ref rejected)
EXAMPLES = [(-10.0, -14.0, -11.0, -12.0), (-20.0, -18.0, -19.0, -19.5)]


def run(loss_type: str, beta: float, smoothing: float = 0.0):
    pc, pr, rc, rr = (torch.tensor([e[i] for e in EXAMPLES], dtype=torch.float64) for i in range(4))
    return preference_loss(pc, pr, rc, rr, loss_type=loss_type, beta=beta, label_smoothing=smoothing)


def h_values() -> list[float]:
    # h = (pc - pr) - (rc - rr): example 1: 4 - 1 = 3; example 2: -2 - 0.5 = -2.5
    return [(pc - pr) - (rc - rr) for pc, pr, rc, rr in EXAMPLES]


def test_h_is_what_the_examples_say():
    assert h_values() == [3.0, -2.5]


@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_dpo_sigmoid(beta):
    losses, chosen, rejected = run("sigmoid", beta)
    expected = [-logsigmoid(beta * 3.0), -logsigmoid(beta * -2.5)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(math.log(1 + math.exp(-0.3 if beta == 0.1 else -0.9)))
    # rewards = beta * (policy - reference)
    assert chosen.tolist() == pytest.approx([beta * 1.0, beta * -1.0])
    assert rejected.tolist() == pytest.approx([beta * -2.0, beta * 1.5])


def test_cdpo_label_smoothing_mixes_both_directions():
    beta, e = 0.1, 0.1
    losses, _, _ = run("sigmoid", beta, e)
    expected = [-(1 - e) * logsigmoid(beta * h) - e * logsigmoid(-beta * h) for h in h_values()]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    # smoothing changes the loss: 0.9*log(1+e^-0.3) + 0.1*log(1+e^0.3) for example 1
    assert losses[0].item() == pytest.approx(0.9 * math.log(1 + math.exp(-0.3)) + 0.1 * math.log(1 + math.exp(0.3)))
    assert losses[0].item() != pytest.approx(run("sigmoid", beta)[0][0].item())


def test_ipo():
    beta = 0.1  # target margin 1/(2*beta) = 5
    losses, _, _ = run("ipo", beta)
    assert losses.tolist() == pytest.approx([(3.0 - 5.0) ** 2, (-2.5 - 5.0) ** 2])  # 4, 56.25


def test_hinge_slic():
    beta = 0.1
    losses, _, _ = run("hinge", beta)
    assert losses.tolist() == pytest.approx([1 - 0.3, 1 + 0.25])
    big_margin, _, _ = preference_loss(
        torch.tensor([0.0]),
        torch.tensor([-20.0]),
        torch.tensor([0.0]),
        torch.tensor([0.0]),
        loss_type="hinge",
        beta=0.1,
    )
    assert big_margin.item() == 0.0  # beta*h = 2 > 1: no loss


def test_kto_pair():
    beta = 0.1
    losses, _, _ = run("kto_pair", beta)
    chosen_ratios = [1.0, -1.0]  # pc - rc
    rejected_ratios = [-2.0, 1.5]  # pr - rr
    chosen_kl = max(0.0, sum(chosen_ratios) / 2)  # 0
    rejected_kl = max(0.0, sum(rejected_ratios) / 2)  # 0 (mean -0.25 clamps to 0)
    expected = [
        ((1 - sigmoid(beta * (c - rejected_kl))) + (1 - sigmoid(beta * (chosen_kl - r)))) / 2
        for c, r in zip(chosen_ratios, rejected_ratios)
    ]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    # with a positive KL estimate the clamp does not bite
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    rc, rr = torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0])
    out, _, _ = preference_loss(pc, pr, rc, rr, loss_type="kto_pair", beta=0.5)
    ckl, rkl = (2.0 + 1.0) / 2, max(0.0, (3.0 + -1.0) / 2)
    want = [
        ((1 - sigmoid(0.5 * (2.0 - rkl))) + (1 - sigmoid(0.5 * (ckl - 3.0)))) / 2,
        ((1 - sigmoid(0.5 * (1.0 - rkl))) + (1 - sigmoid(0.5 * (ckl - -1.0)))) / 2,
    ]
    assert out.tolist() == pytest.approx(want, abs=1e-6)  # float32 inputs: values ~0.5, rounding ~1e-7


@pytest.mark.parametrize(
    "loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0), ("kto_pair", 0.0)]
)
def test_gradient_pushes_chosen_up_and_rejected_down(loss_type, smoothing):
    pc = torch.tensor([-10.0, -12.0], requires_grad=True)
    pr = torch.tensor([-10.5, -11.0], requires_grad=True)
    losses, _, _ = preference_loss(
        pc,
        pr,
        torch.tensor([-10.0, -12.0]),
        torch.tensor([-10.5, -11.0]),
        loss_type=loss_type,
        beta=0.1,
        label_smoothing=smoothing,
    )
    losses.mean().backward()
    # gradient descent moves against the gradient: chosen log-prob rises, rejected falls
    assert (pc.grad < 0).all(), pc.grad
    assert (pr.grad > 0).all(), pr.grad


def test_dpo_gradient_magnitude_matches_closed_form():
    # d/d pc of -logsigmoid(beta*h) = -beta * sigmoid(-beta*h); h = 0 at the reference -> -beta/2
    pc = torch.tensor([-3.0], requires_grad=True, dtype=torch.float64)
    loss, _, _ = preference_loss(
        pc,
        torch.tensor([-4.0], dtype=torch.float64),
        torch.tensor([-3.0], dtype=torch.float64),
        torch.tensor([-4.0], dtype=torch.float64),
        loss_type="sigmoid",
        beta=0.1,
    )
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.05)
    assert loss.item() == pytest.approx(math.log(2))


def test_unknown_loss_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown loss_type 'dpo'.*sigmoid.*ipo.*hinge.*kto_pair"):
        run("dpo", 0.1)
    with pytest.raises(ValueError, match="loss_type"):
        TrainConfig(loss_type="robust")


def test_sequence_logps_against_hand_softmax():
    # vocab 3, one sequence of 4 tokens; only positions 2 and 3 are response tokens
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, 0.0, 0.0], [9.0, 9.0, 9.0]]], dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 0]])

    def log_softmax(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    # token at t is predicted by logits at t-1
    expected = log_softmax([0.5, 0.5, 3.0], 2) + log_softmax([2.0, 0.0, 0.0], 0)
    sums, means, counts = sequence_logps(logits, labels)
    assert sums.item() == pytest.approx(expected)
    assert means.item() == pytest.approx(expected / 2)
    assert counts.item() == 2


def test_sequence_logps_ignores_padding_and_prompt_values():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, 0, 1, 2]]
    )
    changed = logits.clone()
    changed[0, 4:] = 100.0  # logits past the last labelled position of row 0 predict nothing labelled
    a, _, _ = sequence_logps(logits, labels)
    b, _, _ = sequence_logps(changed, labels)
    assert a[0].item() == pytest.approx(b[0].item())
    ref = torch.log_softmax(logits[1, :-1], -1).gather(-1, labels[1, 1:].unsqueeze(-1)).sum()
    assert a[1].item() == pytest.approx(ref.item(), abs=1e-5)  # float32, 5 terms of |log p| < 10: rounding < 1e-5


def test_logps_at_predicting_positions_only_against_hand_softmax_and_the_full_logits():
    # the hand example above: the kept rows are the logits at positions 1 and 2 (they predict 2 and 0)
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [2.0, 0.0, 0.0], [9.0, 9.0, 9.0]]], dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 0]])
    keep = predicting_positions(labels)
    assert keep.tolist() == [[False, True, True, False]]
    expected = (3.0 - math.log(math.exp(0.5) * 2 + math.exp(3.0))) + (2.0 - math.log(math.exp(2.0) + 2))
    sums, means, counts = response_position_logps(logits[keep], labels)
    assert sums.item() == pytest.approx(expected) and means.item() == pytest.approx(expected / 2)
    assert counts.item() == 2
    # random rows with prompts, padding and an unlabelled row: the same values as from every position
    torch.manual_seed(1)
    logits = torch.randn(3, 7, 11)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX, IGNORE_INDEX],
            [IGNORE_INDEX, 4, 5, 6, 7, 8, 9],
            [IGNORE_INDEX] * 7,
        ]
    )
    kept = response_position_logps(logits[predicting_positions(labels)], labels)
    full = sequence_logps(logits, labels)
    for a, b in zip(kept, full):  # the same float32 terms, summed by index_add instead of a masked sum
        assert torch.allclose(a.float(), b.float(), atol=1e-5), (a, b)
    assert kept[2].tolist() == [3, 6, 0] and kept[0][2].item() == 0.0
    with pytest.raises(ValueError, match=r"expected \[9, vocab\]"):
        response_position_logps(logits[:, :2].reshape(-1, 11), labels)


def test_cosine_schedule_with_warmup():
    total, warm = 100, warmup_steps(100, 0.01)
    assert warm == 1
    assert lr_factor(0, total, warm) == 1.0  # warm-up of one step ends at the base LR
    assert lr_factor(1, total, warm) == pytest.approx(1.0)  # cosine starts at 1
    assert lr_factor(50, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert lr_factor(100, total, warm) == pytest.approx(0.0)
    assert [lr_factor(s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_global_batch_is_checked():
    cfg = TrainConfig(global_batch_size=256, per_device_batch_size=4)
    assert accumulation_steps(cfg, 8) == 8  # 4 x 8 x 8 = 256
    with pytest.raises(ValueError, match="not divisible"):
        accumulation_steps(cfg, 3)
    with pytest.raises(ValueError, match="gradient_accumulation_steps 4"):
        accumulation_steps(
            TrainConfig(global_batch_size=256, per_device_batch_size=4, gradient_accumulation_steps=4), 8
        )


def test_epoch_order_is_a_seeded_two_level_shuffle():
    index = PairIndex(["a", "b", "c"], np.array([0, 0, 0, 1, 1, 2, 2, 2, 2], np.int32), np.arange(9, dtype=np.int32))
    first = epoch_order(index, seed=1, epoch=0)
    assert sorted(first.tolist()) == list(range(9))
    assert epoch_order(index, seed=1, epoch=0).tolist() == first.tolist()
    orders = {tuple(epoch_order(index, seed=1, epoch=e).tolist()) for e in range(5)}
    assert len(orders) > 1  # epochs reshuffle
    # rows of one shard stay together
    shards = index.shard[first].tolist()
    runs = [shards[0]] + [s for prev, s in zip(shards, shards[1:]) if s != prev]
    assert len(runs) == 3 and sorted(runs) == [0, 1, 2]


def test_rank_micro_batches_partition_the_global_batch():
    batch = np.arange(16)
    parts = [rank_micro_batches(batch, r, 2, 4) for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]
    flat = np.concatenate([m for p in parts for m in p])
    assert sorted(flat.tolist()) == list(range(16))
    assert all(len(m) == 2 for p in parts for m in p)


class _FixedLogps:
    """A policy backend whose log-probs are given: (sums, means, counts) of chosen then rejected responses."""

    def __init__(self, sums: list[float], counts: list[int]):
        self.sums = torch.tensor(sums, dtype=torch.float64)
        self.counts = torch.tensor(counts, dtype=torch.float64)

    def logps(self, batch):
        return self.sums, self.sums / self.counts, self.counts


def test_rpo_adds_the_chosen_per_token_nll_to_dpo():
    from clipdpo.train.objective import DPOObjective

    # two pairs: chosen sums -6 (3 tokens), -10 (5 tokens); rejected -9, -12; reference as below
    policy = _FixedLogps([-6.0, -10.0, -9.0, -12.0], [3, 5, 4, 6])
    reference = np.array([[-7.0, -8.0, 0.0, 0.0], [-9.0, -13.0, 0.0, 0.0]])
    plain = DPOObjective("sigmoid", 0.1, 0.0, reference_logps=reference)
    rpo = DPOObjective("sigmoid", 0.1, 0.0, rpo_alpha=0.5, reference_logps=reference)
    positions = np.array([0, 1])
    dpo_losses, _, _ = plain.losses(policy, None, positions)
    rpo_losses, chosen_rewards, _ = rpo.losses(policy, None, positions)
    # by hand: h = (-6 - -9) - (-7 - -8) = 2 and (-10 - -12) - (-9 - -13) = -2; NLL per token 6/3 = 2, 10/5 = 2
    expected_dpo = [math.log1p(math.exp(-0.1 * 2.0)), math.log1p(math.exp(-0.1 * -2.0))]
    assert dpo_losses.tolist() == pytest.approx(expected_dpo, abs=1e-12)
    assert rpo_losses.tolist() == pytest.approx([expected_dpo[0] + 0.5 * 2.0, expected_dpo[1] + 0.5 * 2.0], abs=1e-12)
    assert chosen_rewards.tolist() == pytest.approx([0.1 * (-6 + 7), 0.1 * (-10 + 9)], abs=1e-12)


def test_rpo_alpha_is_read_from_the_config_and_refused_below_zero():
    from clipdpo.train.objective import DPOObjective

    cfg = TrainConfig(rpo_alpha=0.25)
    assert DPOObjective.from_config(cfg, reference_logps=np.zeros((1, 4))).rpo_alpha == 0.25
    with pytest.raises(ValueError, match="rpo_alpha"):
        TrainConfig(rpo_alpha=-0.1)
