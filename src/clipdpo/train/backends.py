"""Two ways to run the same training step: torch DDP (CPU/gloo tests, small GPU runs) and
DeepSpeed ZeRO (the cluster default). Both present logps / backward / step / save / load
(logps runs a batch in the layout chosen for the model, layouts.py).

Loss scaling is the same in both: each micro-batch's loss is the mean over its examples, divided
by the accumulation count (DeepSpeed does that division itself), and gradients are averaged over
ranks, so an optimizer step sees the mean over the whole global batch however it is split.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, ContextManager, Protocol

import numpy as np
import torch

from clipdpo.train import dist
from clipdpo.train.config import TrainConfig
from clipdpo.train.layouts import Batch, Layout, Logps, model_logits
from clipdpo.train.schedule import StepPlan, lr_factor


class Backend(Protocol):
    """What the recipe, the objectives and the checkpoints ask of a training backend (DDP or DeepSpeed)."""

    @property
    def name(self) -> str: ...

    layout: Layout  # how batches go through the model (layouts.choose)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits of a concatenated batch, through the wrapper (POVID's teacher-forced answers)."""
        ...

    def logps(self, batch: Batch) -> Logps:
        """(sums, means, counts) of the batch's 2n responses in the layout, through the wrapper (with gradients)."""
        ...

    def micro_step(self, last: bool) -> ContextManager[object]:
        """Context for one micro-batch of an optimizer step; `last`: the step's last one."""
        ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float:
        """The optimizer step after the last micro-batch; returns the gradient norm."""
        ...

    def lr(self) -> float: ...

    def train(self, mode: bool = True) -> None: ...

    def save(self, local_dir: str) -> None:
        """Weights, optimizer, scheduler and RNG state into `local_dir` (collective)."""
        ...

    def load(self, local_dir: str) -> None: ...

    def unwrapped(self) -> Any:
        """The model under the DDP / DeepSpeed wrapper: a transformers model, or a PEFT model over one (Any: PEFT
        hands the model's attributes, `dtype` among them, on through __getattr__)."""
        ...

    def full_state_dict(self) -> dict | None:
        """The whole state dict where ranks hold parts of it (collective), else None."""
        ...


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # torch's AdamW: DeepSpeed's fused/CPU Adam would JIT-compile ops at start-up.
    return torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )


def make_scheduler(optimizer, total_steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup))


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(local_dir: str, rank: int) -> None:
    torch.save(rng_state(), os.path.join(local_dir, f"rng-rank{rank}.pt"))


def load_rng(local_dir: str, rank: int) -> None:
    """Restore this rank's RNG state when the checkpoint holds one."""
    path = os.path.join(local_dir, f"rng-rank{rank}.pt")
    if os.path.exists(path):
        set_rng_state(torch.load(path, weights_only=False))


class DDPBackend:
    name = "ddp"

    def __init__(self, model, cfg: TrainConfig, ctx: dist.DistContext, plan: StepPlan, layout: Layout):
        self.ctx = ctx
        self.cfg = cfg
        self.layout = layout  # layouts.choose(cfg.forward, model): how batches go through the model
        self.accumulation = plan.accumulation
        self.model = model.to(ctx.device)
        self.module = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=device_ids)
        self.optimizer = make_optimizer(self.module, cfg)
        self.scheduler = make_scheduler(self.optimizer, plan.total_steps, plan.warmup)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits of a concatenated batch (POVID's rows; forward=concatenated)."""
        return model_logits(self.model, batch, self.ctx.device, self.module.dtype)

    def logps(self, batch: Batch) -> Logps:
        """(sums, means, counts) of the batch's 2n responses, through the DDP wrapper (gradient hooks)."""
        return self.layout.logps(self.model, batch, self.ctx.device, self.module.dtype)

    def micro_step(self, last: bool) -> ContextManager[object]:
        """Context for one micro-batch: gradients are all-reduced only on the last one."""
        if self.ctx.distributed and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    # Every rank holds the same weights and optimizer state: rank 0 writes them, all read them.
    def save(self, local_dir: str) -> None:
        if self.ctx.is_main:
            trainable = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
            torch.save(
                {
                    "model": trainable,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                },
                os.path.join(local_dir, "state.pt"),
            )
        save_rng(local_dir, self.ctx.rank)

    def load(self, local_dir: str) -> None:
        state = torch.load(os.path.join(local_dir, "state.pt"), map_location=self.ctx.device, weights_only=False)
        missing = self.module.load_state_dict(state["model"], strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"checkpoint {local_dir}: unexpected parameters {missing.unexpected_keys[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        load_rng(local_dir, self.ctx.rank)

    def unwrapped(self) -> Any:
        return self.module

    def full_state_dict(self) -> dict | None:
        """None: the module's own state dict is complete on every rank."""
        return None


class DeepSpeedBackend:
    """ZeRO-1/2/3 through deepspeed.initialize; imported only when chosen."""

    name = "deepspeed"

    def __init__(self, model, cfg: TrainConfig, ctx: dist.DistContext, plan: StepPlan, ds_config: dict, layout: Layout):
        import deepspeed

        self.ctx = ctx
        self.cfg = cfg
        self.layout = layout  # layouts.choose(cfg.forward, model): how batches go through the model
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, plan.total_steps, plan.warmup)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.module = self.engine.module

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits of a concatenated batch (POVID's rows; forward=concatenated)."""
        return model_logits(self.engine, batch, self.ctx.device, self.module.dtype)

    def logps(self, batch: Batch) -> Logps:
        """(sums, means, counts) of the batch's 2n responses, through the engine (ZeRO-3 gathers parameters)."""
        return self.layout.logps(self.engine, batch, self.ctx.device, self.module.dtype)

    def micro_step(self, last: bool) -> ContextManager[object]:
        return contextlib.nullcontext()  # DeepSpeed knows its accumulation boundary

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scaled by 1/accumulation inside
        self.engine.step()  # a no-op except at the accumulation boundary

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def save(self, local_dir: str) -> None:
        # Collective: every rank writes its ZeRO partition; tag fixed so the folder is self-contained.
        self.engine.save_checkpoint(local_dir, tag="state")
        save_rng(local_dir, self.ctx.rank)

    def load(self, local_dir: str) -> None:
        path, _ = self.engine.load_checkpoint(local_dir, tag="state")
        if path is None:
            raise ValueError(f"checkpoint {local_dir}: DeepSpeed found no state to load")
        load_rng(local_dir, self.ctx.rank)

    def unwrapped(self) -> Any:
        return self.module

    def full_state_dict(self) -> dict | None:
        """ZeRO-3 holds 1/world of each parameter per rank: a collective gather (every rank calls it), or None."""
        if self.cfg.zero_stage != 3:
            return None
        return self.engine._zero3_consolidated_16bit_state_dict()


def frozen_reference(model, ctx: dist.DistContext, strategy: str, ds_config: dict | None):
    """A frozen copy for reference="model": plain module (DDP) or a ZeRO-3 inference engine."""
    model.requires_grad_(False)
    model.eval()
    if strategy == "deepspeed":
        import deepspeed

        if ds_config is None:
            raise ValueError("frozen_reference: the deepspeed strategy needs its config")
        config = {key: ds_config[key] for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "bf16", "fp16")}
        config["zero_optimization"] = {"stage": 3 if ds_config["zero_optimization"]["stage"] == 3 else 0}
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine
    return model.to(ctx.device)
