"""Preference losses as pure functions of per-sequence log-probs (the paper's Table 5 variants).

With h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected):
  sigmoid   DPO, -logsigmoid(beta*h); with label_smoothing e it is cDPO:
            -(1-e)*logsigmoid(beta*h) - e*logsigmoid(-beta*h)
  ipo       (h - 1/(2*beta))^2; IPO defines h on length-averaged log-probs, so the trainer
            passes per-token means for this loss (see `uses_mean_logps`)
  hinge     SLiC, relu(1 - beta*h)
  kto_pair  the paired KTO form of TRL <= 0.11 (dropped since), which the paper compares

Rewards are beta * (policy - reference) log-ratios, detached: they are for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "kto_pair")


def uses_mean_logps(loss_type: str) -> bool:
    """IPO is defined on length-normalised log-likelihoods; the others on sums."""
    return loss_type == "ipo"


def check_loss_type(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid loss types are {list(LOSS_TYPES)}")


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses and (chosen, rejected) rewards, each of shape [batch]."""
    check_loss_type(loss_type)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios

    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # kto_pair: each side is compared with the other side's batch-mean KL estimate
        chosen_kl = chosen_logratios.mean().clamp(min=0)
        rejected_kl = rejected_logratios.mean().clamp(min=0)
        chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - rejected_kl))
        rejected_losses = 1 - torch.sigmoid(beta * (chosen_kl - rejected_logratios))
        # TRL concatenated the two halves and took the mean; per example that is their average.
        losses = (chosen_losses + rejected_losses) / 2

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards
