"""The DPO objective of one micro-batch: policy log-probs against the reference's, through a preference loss.

The reference is either precomputed log-probs looked up by index position (the reference cache) or a
frozen model run on the same batch. IPO compares per-token means, the other losses sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipdpo.train.backends import Backend
from clipdpo.train.config import TrainConfig
from clipdpo.train.layouts import Batch, Layout
from clipdpo.train.loss import preference_loss, uses_mean_logps
from clipdpo.train.model import resolve_dtype

Losses = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per-example losses, chosen rewards, rejected rewards


def chosen_nll(chosen_mean_logps: torch.Tensor) -> torch.Tensor:
    """RPO's NLL term per pair: the chosen response's negative log-likelihood per token (its length-normalised
    form, as in Pang et al. 2024 and TRL's rpo_alpha)."""
    return -chosen_mean_logps


@dataclass
class DPOObjective:
    loss_type: str
    beta: float
    label_smoothing: float
    rpo_alpha: float = 0.0  # weight of the chosen responses' per-token NLL added to each pair's loss (RPO)
    reference_logps: np.ndarray | None = None  # [good pairs, 4] from the cache (see refcache.VALUE_COLUMNS)
    reference_model: Any = None  # or a frozen model (reference="model"): a module, or a ZeRO-3 inference engine
    model_dtype: torch.dtype = torch.float32  # what the models were loaded in (the images are cast to it)
    layout: Layout | None = None  # how the reference model runs a batch: the policy's layout (layouts.py)

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        reference_logps: np.ndarray | None = None,
        reference_model: Any = None,
        layout: Layout | None = None,
    ) -> "DPOObjective":
        if (reference_logps is None) == (reference_model is None):
            raise ValueError("the objective needs exactly one reference: precomputed log-probs or a model")
        if reference_model is not None and layout is None:
            raise ValueError("a reference model needs the policy's layout to run batches")
        return cls(
            cfg.loss_type,
            cfg.beta,
            cfg.label_smoothing,
            cfg.rpo_alpha,
            reference_logps,
            reference_model,
            resolve_dtype(cfg.dtype),
            layout,
        )

    @property
    def uses_means(self) -> bool:
        return uses_mean_logps(self.loss_type)

    def losses(self, policy: Backend, batch: Batch, positions: np.ndarray, step: int = 0) -> Losses:
        """Losses and rewards of the pairs at index `positions`, whose batch is `batch` (at optimizer step
        `step`, which only objectives with a schedule use). `policy` is the backend: `policy.logps(batch)`
        gives the (sums, means, counts) of the 2n responses, chosen first, in the batch's layout."""
        sums, means, _ = policy.logps(batch)
        values = means if self.uses_means else sums
        n = len(positions)
        ref_chosen, ref_rejected = self._reference(batch, sums.device, positions)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            values[:n],
            values[n:],
            ref_chosen.to(values.dtype),
            ref_rejected.to(values.dtype),
            loss_type=self.loss_type,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
        )
        if self.rpo_alpha:
            losses = losses + self.rpo_alpha * chosen_nll(means[:n])
        return losses, chosen_rewards, rejected_rewards

    def _reference(
        self, batch: Batch, device: torch.device, positions: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_logps is not None:
            ref = torch.as_tensor(self.reference_logps[positions], device=device)
            return (ref[:, 2], ref[:, 3]) if self.uses_means else (ref[:, 0], ref[:, 1])
        assert self.layout is not None  # from_config refuses a reference model without one
        with torch.no_grad():
            sums, means, _ = self.layout.logps(self.reference_model, batch, device, self.model_dtype)
        values = means if self.uses_means else sums
        n = len(positions)
        return values[:n], values[n:]
