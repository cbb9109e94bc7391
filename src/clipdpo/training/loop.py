"""The DPO training run: index the pairs, reference log-probs, optimizer steps, checkpoints, outputs.

Step k (0-based, counted over all epochs) always trains on the same global batch: batch
k mod steps_per_epoch of epoch k // steps_per_epoch's order. A resumed run restores weights,
optimizer, scheduler and RNG from the newest checkpoint and continues at the next step, so it ends
where an uninterrupted run ends. Outputs under `<output>/`: `model/` (Hugging Face format),
`metrics.jsonl` (one line per step), `checkpoints/`, and `train_summary.json`, written last.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, code_version, fingerprint
from clipdpo.storage import NotFound, Storage, join
from clipdpo.training import checkpoint, dist, refcache
from clipdpo.training.backends import DDPBackend, DeepSpeedBackend, frozen_reference
from clipdpo.training.config import TrainConfig, accumulation_steps
from clipdpo.training.data import PairStore, build_index, collate, epoch_order, prefetch, rank_micro_batches
from clipdpo.training.encode import PairEncoder
from clipdpo.training.logps import sequence_logps
from clipdpo.training.loss import preference_loss, uses_mean_logps
from clipdpo.training.model import (load_model, load_processor, local_model_dir, model_signature, prepare_policy,
                                    save_hf, upload_tree)
from clipdpo.training.schedule import warmup_steps

log = logging.getLogger("clipdpo.train")

SUMMARY = "train_summary.json"
# Config keys that do not change what is trained (excluded from the output fingerprint).
_NON_SEMANTIC = ("debug_kill_after_step", "save_steps", "keep_checkpoints", "log_steps", "reference_cache")


class OutputExists(RuntimeError):
    pass


@dataclass
class StepStats:
    """Sums over one optimizer step's examples on this rank (all-reduced before logging)."""

    values: torch.Tensor  # loss, chosen reward, rejected reward, correct, margin, examples, tokens

    @classmethod
    def zero(cls) -> "StepStats":
        return cls(torch.zeros(7, dtype=torch.float64))

    def add(self, losses, chosen_rewards, rejected_rewards, tokens: int) -> None:
        self.values += torch.tensor([
            float(losses.detach().sum()), float(chosen_rewards.sum()), float(rejected_rewards.sum()),
            float((chosen_rewards > rejected_rewards).sum()), float((chosen_rewards - rejected_rewards).sum()),
            len(losses), tokens], dtype=torch.float64)


def output_fingerprint(cfg: TrainConfig, pairs: Artifact) -> str:
    semantic = {k: v for k, v in config_lib.to_dict(cfg).items() if k not in _NON_SEMANTIC}
    return fingerprint("model", semantic, [pairs.manifest.fingerprint])


def _existing_summary(storage: Storage, output: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(join(output, SUMMARY)))
    except NotFound:
        return None


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def train(cfg: TrainConfig, pairs_uri: str, output: str, *, overwrite: bool = False,
          storage: Storage | None = None) -> dict:
    storage = storage or Storage()
    output = output.rstrip("/")
    ctx = dist.init()
    try:
        return _train(ctx, cfg, pairs_uri, output, overwrite, storage)
    finally:
        dist.shutdown(ctx)


def _train(ctx: dist.DistContext, cfg: TrainConfig, pairs_uri: str, output: str, overwrite: bool,
           storage: Storage) -> dict:
    started = time.monotonic()
    accumulation = accumulation_steps(cfg, ctx.world_size)
    strategy = dist.resolve_strategy(cfg)
    if strategy == "deepspeed" and cfg.zero_stage == 3 and cfg.finetune == "lora":
        raise ValueError("finetune=lora with DeepSpeed zero_stage=3 is not supported (the adapter cannot be saved "
                         "from partitioned weights); LoRA weights are small: use zero_stage=2")
    pairs = Artifact.open(storage, pairs_uri, kind="pairs")
    run_fingerprint = output_fingerprint(cfg, pairs)
    existing = _existing_summary(storage, output)
    if existing is not None:
        if existing.get("fingerprint") == run_fingerprint:
            log.info("%s already holds this training run's model: nothing to do", output)
            return existing
        if not overwrite:
            raise OutputExists(f"{output} holds a model trained from other pairs or config; "
                               "write to a new URI or pass --overwrite")
    if ctx.is_main:
        storage.ensure_bucket(output)
        if existing is not None:
            storage.delete(join(output, SUMMARY))
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    scratch = checkpoint.scratch_dir(output)
    models_cache = os.path.join(scratch, "models")
    if ctx.is_local_main:
        local_model_dir(storage, cfg.model, models_cache)  # one copy per node of a model on S3
    dist.barrier(ctx)
    model_dir = local_model_dir(storage, cfg.model, models_cache)  # complete now: only resolves the path
    processor = load_processor(model_dir, cfg)
    encoder = PairEncoder(processor, cfg.max_length)
    pad_token_id = processor.tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = processor.tokenizer.eos_token_id
    index = build_index(pairs, encoder, truncate=cfg.truncate_responses, on_bad_pair=cfg.on_bad_pair)
    steps_per_epoch = len(index) // cfg.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{pairs_uri}: {len(index)} good pairs, fewer than global_batch_size "
                         f"{cfg.global_batch_size}: nothing to train")
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = warmup_steps(total_steps, cfg.warmup_ratio)
    dropped = len(index) - steps_per_epoch * cfg.global_batch_size
    log.info("%d good pairs -> %d step(s)/epoch x %d epoch(s) = %d steps (global batch %d = %d per device x %d "
             "accumulation x %d ranks; %d pair(s) per epoch beyond the last full batch are not used); %s",
             len(index), steps_per_epoch, cfg.epochs, total_steps, cfg.global_batch_size,
             cfg.per_device_batch_size, accumulation, ctx.world_size, dropped, strategy)

    ds_config = None
    if strategy == "deepspeed":
        import deepspeed

        # DeepSpeed keeps its own communication handle (wrapping torchrun's process group); ZeRO-3's
        # sharded loading below already needs it.
        deepspeed.init_distributed(dist_backend="nccl" if ctx.device.type == "cuda" else "gloo")
        ds_config = dist.deepspeed_config(cfg, ctx.world_size, accumulation)
        if cfg.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            _keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841  from_pretrained then shards at load
    base = load_model(model_dir, cfg)
    policy = prepare_policy(base, cfg)
    backend_cls = DeepSpeedBackend if strategy == "deepspeed" else DDPBackend
    backend_args = (policy, cfg, ctx, accumulation, total_steps, warmup)
    backend = backend_cls(*backend_args, ds_config) if strategy == "deepspeed" else backend_cls(*backend_args)
    store = PairStore(pairs, index)
    to_device = lambda batch: _to_device(batch, ctx.device)  # noqa: E731

    reference_logps = None
    reference_model = None
    cache_uri = ""
    if cfg.reference == "precompute":
        key = refcache.cache_key(pairs, model_signature(model_dir, cfg), encoder, cfg.truncate_responses)
        cache_uri = refcache.cache_uri(pairs, key, cfg.reference_cache)
        resumable = checkpoint.complete_steps(storage, output)
        complete = storage.exists(join(cache_uri, "manifest.json"))
        if resumable and not complete:
            raise RuntimeError(f"{output} has checkpoints but the reference cache {cache_uri} is incomplete: the "
                               "policy is no longer the reference; delete the checkpoints or restore the cache")
        # Before any training step the policy is the reference model (LoRA starts as a no-op).
        backend.train(False)
        reference_logps = refcache.ensure(ctx, backend.forward, pairs, index, store, encoder, key, cache_uri,
                                          micro_batch=cfg.per_device_batch_size, truncate=cfg.truncate_responses,
                                          pad_token_id=pad_token_id, to_device=to_device)
    else:
        reference_model = frozen_reference(load_model(model_dir, cfg), ctx, strategy, ds_config)

    metrics: list[dict] = []
    start_step = 0
    record = checkpoint.restore(ctx, storage, backend, output, scratch)
    if record is not None:
        start_step = record["step"]
        metrics = record.get("metrics", [])

    use_mean = uses_mean_logps(cfg.loss_type)
    progress = _progress(ctx, total_steps, start_step)
    backend.train(True)

    def schedule():
        """(step, micro-batch number, positions) for every micro-batch this rank runs, in order."""
        order_epoch, order = -1, None
        for step in range(start_step, total_steps):
            epoch, batch_in_epoch = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(index, cfg.seed, epoch)
            global_batch = order[batch_in_epoch * cfg.global_batch_size:(batch_in_epoch + 1) * cfg.global_batch_size]
            for m, positions in enumerate(rank_micro_batches(global_batch, ctx.rank, ctx.world_size, accumulation)):
                yield step, m, positions

    def prepare(item) -> dict:
        examples = [store.example(int(p)) for p in item[2]]
        return collate(encoder.encode_batch(examples, cfg.truncate_responses), pad_token_id)

    def micro_batch_losses(batch: dict, positions: np.ndarray):
        logits = backend.forward(batch)
        sums, means, _ = sequence_logps(logits, batch["labels"])
        policy_logps = means if use_mean else sums
        n = len(positions)
        if reference_logps is not None:
            ref = torch.as_tensor(reference_logps[positions], device=logits.device)
            ref_chosen, ref_rejected = (ref[:, 2], ref[:, 3]) if use_mean else (ref[:, 0], ref[:, 1])
        else:
            with torch.no_grad():
                ref_logits = reference_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                             pixel_values=batch["pixel_values"].to(backend.unwrapped().dtype),
                                             use_cache=False).logits
                ref_sums, ref_means, _ = sequence_logps(ref_logits, batch["labels"])
            ref_values = ref_means if use_mean else ref_sums
            ref_chosen, ref_rejected = ref_values[:n], ref_values[n:]
        return preference_loss(policy_logps[:n], policy_logps[n:], ref_chosen.to(policy_logps.dtype),
                               ref_rejected.to(policy_logps.dtype), loss_type=cfg.loss_type, beta=cfg.beta,
                               label_smoothing=cfg.label_smoothing)

    step_started = time.monotonic()
    stats = StepStats.zero()
    for (step, m, positions), cpu_batch in prefetch(schedule(), prepare):
        batch = to_device(cpu_batch)
        with backend.micro_step(last=m == accumulation - 1):
            losses, chosen_rewards, rejected_rewards = micro_batch_losses(batch, positions)
            backend.backward(losses.mean())
        stats.add(losses, chosen_rewards, rejected_rewards, int(batch["attention_mask"].sum()))
        if m < accumulation - 1:
            continue
        grad_norm = backend.step()
        totals = dist.all_reduce_sum(ctx, stats.values)
        seconds = time.monotonic() - step_started
        examples = float(totals[5])
        row = {
            "step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4),
            "loss": float(totals[0]) / examples,
            "rewards/chosen": float(totals[1]) / examples, "rewards/rejected": float(totals[2]) / examples,
            "rewards/accuracy": float(totals[3]) / examples, "rewards/margin": float(totals[4]) / examples,
            "lr": backend.lr(), "grad_norm": grad_norm,
            "samples_per_s": examples / seconds, "tokens_per_s": float(totals[6]) / seconds, "seconds": seconds,
        }
        metrics.append(row)
        if ctx.is_main and (step + 1) % cfg.log_steps == 0:
            _report(progress, row)
        done = step + 1
        if done % cfg.save_steps == 0 and done < total_steps:
            checkpoint.save(ctx, storage, backend, output, done, {"metrics": metrics, "fingerprint": run_fingerprint},
                            cfg.keep_checkpoints, scratch)
            if ctx.is_main:
                storage.write_bytes(join(output, "metrics.jsonl"), _jsonl(metrics))
        if cfg.debug_kill_after_step and done == cfg.debug_kill_after_step:
            log.warning("debug_kill_after_step=%d: killing this process", done)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        step_started = time.monotonic()
        stats = StepStats.zero()
    if progress is not None:
        progress.close()
    return _finish(ctx, cfg, storage, backend, processor, output, metrics, index, pairs_uri, cache_uri,
                   run_fingerprint, total_steps, strategy, started, scratch)


def _finish(ctx, cfg, storage, backend, processor, output, metrics, index, pairs_uri, cache_uri, run_fingerprint,
            total_steps, strategy, started, scratch) -> dict:
    local_dir = os.path.join(scratch, "final")
    model = backend.unwrapped()
    if strategy == "deepspeed" and cfg.zero_stage == 3:
        # ZeRO-3 holds 1/world of each parameter per rank: a collective gather, then rank 0 writes.
        state_dict = backend.engine._zero3_consolidated_16bit_state_dict()
        if ctx.is_main:
            save_hf(model, processor, cfg, local_dir, state_dict=state_dict)
    elif ctx.is_main:
        save_hf(model, processor, cfg, local_dir)
    dist.barrier(ctx)
    summary = {
        "fingerprint": run_fingerprint, "pairs": pairs_uri, "model": join(output, "model"),
        "finetune": cfg.finetune, "steps": total_steps, "strategy": strategy, "world_size": ctx.world_size,
        "reference_cache": cache_uri, "code_version": code_version(), "config": config_lib.to_dict(cfg),
        "data": index.summary(), "seconds": round(time.monotonic() - started, 2),
        "final": metrics[-1] if metrics else {},
    }
    if ctx.is_main:
        upload_tree(storage, local_dir, join(output, "model"))
        storage.write_bytes(join(output, "metrics.jsonl"), _jsonl(metrics))
        storage.write_bytes(join(output, SUMMARY), json.dumps(summary, indent=2).encode())  # last: completion
        log.info("model -> %s", join(output, "model"))
    dist.barrier(ctx)
    return summary


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def _progress(ctx: dist.DistContext, total: int, start: int):
    if not ctx.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="dpo", unit="step")


def _report(progress, row: dict) -> None:
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracy']:.2f}",
                             margin=f"{row['rewards/margin']:.3f}")
    else:
        log.info("step %d loss %.4f acc %.3f margin %.4f lr %.3g %.1f samples/s", row["step"], row["loss"],
                 row["rewards/accuracy"], row["rewards/margin"], row["lr"], row["samples_per_s"])
