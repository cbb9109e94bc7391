"""POVID's loss (Eq. 5) as a pure function of per-sequence log-probs.

  z = alpha * (pi(y_w|x) - ref(y_w|x))
      - (beta_1 * (pi(y_t|x) - ref(y_t|x)) + beta_2 * (pi(y_n|x_n) - ref(y_n|x_n)))
  loss = -logsigmoid(z)

y_t is the text dispreference (the pair's rejected answer), y_n the policy's answer on the noised
image x_n, scored on x_n by both models. With beta_2 = 0 and alpha = beta_1 = beta this is the
DPO sigmoid loss with beta (stage 1 of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def povid_loss(
    chosen_logratios: torch.Tensor,
    text_rejected_logratios: torch.Tensor,
    noisy_rejected_logratios: torch.Tensor | None,
    *,
    alpha: float,
    beta_1: float,
    beta_2: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses, chosen rewards and (combined) rejected rewards, each [batch].

    Log-ratios are policy minus reference log-probs; `noisy_rejected_logratios` may be None only
    when beta_2 == 0 (no noisy term)."""
    if alpha <= 0 or beta_1 < 0 or beta_2 < 0:
        raise ValueError(f"POVID needs alpha > 0, beta_1 >= 0, beta_2 >= 0; got {alpha}, {beta_1}, {beta_2}")
    rejected = beta_1 * text_rejected_logratios
    if beta_2:
        if noisy_rejected_logratios is None:
            raise ValueError("beta_2 > 0 needs the noisy-image rejections' log-ratios")
        rejected = rejected + beta_2 * noisy_rejected_logratios
    chosen = alpha * chosen_logratios
    losses = -F.logsigmoid(chosen - rejected)
    return losses, chosen.detach(), rejected.detach()
