"""Process-group set-up from torchrun's environment, and the DeepSpeed config we generate.

torchrun (one PyTorchJob replica per node) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.
Without them this is one process and no process group. GPU: NCCL; CPU: gloo.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from clipdpo.train.config import TrainConfig


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(timeout_minutes: float | None = None) -> DistContext:
    """The process group torchrun's environment describes; `timeout_minutes`: how long a collective may wait
    before the watchdog ends the process (None: PyTorch's default, 10 minutes on NCCL)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch_dist.is_initialized():
        timeout = None if timeout_minutes is None else datetime.timedelta(minutes=timeout_minutes)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistContext(rank, world_size, local_rank, device)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        torch_dist.barrier()


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        values = values.clone()
        torch_dist.all_reduce(values)
    return values


def all_gather_objects(ctx: DistContext, item) -> list:
    if not ctx.distributed:
        return [item]
    out = [None] * ctx.world_size
    torch_dist.all_gather_object(out, item)
    return out


def broadcast_object(ctx: DistContext, item):
    if not ctx.distributed:
        return item
    box = [item]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def resolve_strategy(cfg: TrainConfig) -> str:
    if cfg.strategy != "auto":
        return cfg.strategy
    return "deepspeed" if torch.cuda.is_available() else "ddp"


def deepspeed_config(cfg: TrainConfig, world_size: int, accumulation: int) -> dict:
    """DeepSpeed settings derived from ours, so the two can never disagree on batch or precision."""
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    return {
        "train_batch_size": cfg.per_device_batch_size * accumulation * world_size,
        "train_micro_batch_size_per_gpu": cfg.per_device_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 5e8,
            "stage3_prefetch_bucket_size": 5e8,
            "stage3_param_persistence_threshold": 1e6,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
