"""Learning-rate schedule: linear warm-up, then cosine decay to zero (the paper's setting)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    """The run's optimizer steps: how many per epoch and in all, warm-up, micro-batches per step per rank."""

    steps_per_epoch: int
    total_steps: int
    warmup: int
    accumulation: int

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) that 0-based optimizer step `step` trains on."""
        return divmod(step, self.steps_per_epoch)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
