"""What happens around each optimizer step, kept out of the loop: metrics and checkpoints.

A callback (`Callback`) gets `on_step_end(run, step, row)` after optimizer step `step` (1-based) with that
step's metrics row, and `on_train_end(run)` after the last step. `run` is the TrainRun (recipe.py), seen
through `Run`: what a callback may read of it.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from clipdpo.progress import Progress
from clipdpo.storage import Storage, join
from clipdpo.train.backends import Backend
from clipdpo.train.checkpoint import Checkpoints
from clipdpo.train.config import TrainConfig
from clipdpo.train.dist import DistContext
from clipdpo.train.schedule import StepPlan

log = logging.getLogger("clipdpo.train")

METRICS = "metrics.jsonl"


class Run(Protocol):
    """What a callback reads of the training run (recipe.TrainRun has it all)."""

    ctx: DistContext
    cfg: TrainConfig
    storage: Storage
    output: str  # the run's output URI
    fingerprint: str
    plan: StepPlan
    backend: Backend
    checkpoints: Checkpoints
    metrics: list[dict]  # every step's row so far; the metrics callback appends to it


class Callback(Protocol):
    def on_step_end(self, run: Run, step: int, row: dict) -> None:
        """After optimizer step `step` (1-based), with its metrics row (metrics_row)."""
        ...

    def on_train_end(self, run: Run) -> None:
        """After the last step, before the model is saved."""
        ...


@dataclass
class StepStats:
    """Sums over one optimizer step's examples on this rank (all-reduced before logging)."""

    values: torch.Tensor  # loss, chosen reward, rejected reward, correct, margin, examples, tokens

    @classmethod
    def zero(cls) -> "StepStats":
        return cls(torch.zeros(7, dtype=torch.float64))

    def add(self, losses, chosen_rewards, rejected_rewards, tokens: int) -> None:
        self.values += torch.tensor(
            [
                float(losses.detach().sum()),
                float(chosen_rewards.sum()),
                float(rejected_rewards.sum()),
                float((chosen_rewards > rejected_rewards).sum()),
                float((chosen_rewards - rejected_rewards).sum()),
                len(losses),
                tokens,
            ],
            dtype=torch.float64,
        )


def metrics_row(
    totals: torch.Tensor, step: int, steps_per_epoch: int, lr: float, grad_norm: float, seconds: float
) -> dict:
    """One metrics.jsonl line from the all-reduced StepStats of optimizer step `step` (1-based)."""
    examples = float(totals[5])
    return {
        "step": step,
        "epoch": round(step / steps_per_epoch, 4),
        "loss": float(totals[0]) / examples,
        "rewards/chosen": float(totals[1]) / examples,
        "rewards/rejected": float(totals[2]) / examples,
        "rewards/accuracy": float(totals[3]) / examples,
        "rewards/margin": float(totals[4]) / examples,
        "lr": lr,
        "grad_norm": grad_norm,
        "samples_per_s": examples / seconds,
        "tokens_per_s": float(totals[6]) / seconds,
        "seconds": seconds,
    }


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


class MetricsCallback:
    """Keeps every step's row on the run (checkpoints and the summary carry them); shows progress on rank 0:
    a tqdm bar on a terminal, else a log line (steps, steps/s, ETA, loss, accuracy, tokens/s) at most every
    CLIPDPO_PROGRESS_SECONDS (clipdpo.progress; none with CLIPDPO_QUIET=1)."""

    def __init__(self, log_steps: int):
        self.log_steps = log_steps
        self.progress: Any = None  # a tqdm bar when the output is a terminal
        self.lines: Progress | None = None  # when logging to a file

    def on_step_end(self, run: Run, step: int, row: dict) -> None:
        run.metrics.append(row)
        if not run.ctx.is_main:
            return
        if not sys.stderr.isatty():
            self._log_line(run, step, row)
            return
        if step % self.log_steps:
            return
        if self.progress is None:
            from tqdm import tqdm

            self.progress = tqdm(total=run.plan.total_steps, initial=step - 1, desc="dpo", unit="step")
        self.progress.update(1)
        self.progress.set_postfix(
            loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracy']:.2f}", margin=f"{row['rewards/margin']:.3f}"
        )

    def _log_line(self, run: Run, step: int, row: dict) -> None:
        if self.lines is None:  # a resumed run starts at its checkpoint's step: its rate counts its own steps
            self.lines = Progress(
                "train", run.plan.total_steps, unit="steps", done=step - 1, say=lambda line: log.info("%s", line)
            )
        self.lines.advance(
            1,
            loss=row["loss"],
            accuracy=row["rewards/accuracy"],
            margin=row["rewards/margin"],
            tokens_per_s=row["tokens_per_s"],
        )

    def on_train_end(self, run: Run) -> None:
        if self.progress is not None:
            self.progress.close()


class CheckpointCallback:
    """Every `save_steps` optimizer steps (not after the last: the final model is saved instead), a checkpoint
    with the metrics so far, and metrics.jsonl brought up to date."""

    def __init__(self, save_steps: int):
        self.save_steps = save_steps

    def on_step_end(self, run: Run, step: int, row: dict) -> None:
        if step % self.save_steps or step >= run.plan.total_steps:
            return
        run.checkpoints.save(run.backend, step, {"metrics": run.metrics, "fingerprint": run.fingerprint})
        if run.ctx.is_main:
            run.storage.write_bytes(join(run.output, METRICS), jsonl(run.metrics))

    def on_train_end(self, run: Run) -> None:
        pass
