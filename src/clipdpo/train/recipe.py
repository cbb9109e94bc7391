"""The DPO training recipe: set up once (`TrainRun.setup`), train (`TrainRun.train`), clean up (`cleanup`).

Step k (0-based, counted over all epochs) always trains on the same global batch: batch
k mod steps_per_epoch of epoch k // steps_per_epoch's order. A resumed run restores weights,
optimizer, scheduler and RNG from the newest checkpoint and continues at the next step, so it ends
where an uninterrupted run ends. Outputs under `<output>/`: `model/` (Hugging Face format),
`metrics.jsonl` (one line per step), `checkpoints/`, and `train_summary.json`, written last: it lists the
model's files with their sizes and sha256 (and S3 ETags). A rerun verifies them (clipdpo.integrity); when
one is damaged the run resumes from its newest checkpoint to make the model again (no final state is kept
besides the model itself) and writes only the files whose bytes differ from the intact ones.
The loss of a micro-batch is the objective's (objective.py); metrics and checkpoints are callbacks
(callbacks.py); the loop only runs micro-batches and optimizer steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from clipdpo import config as config_lib
from clipdpo import integrity
from clipdpo.artifacts import Artifact, code_version, fingerprint
from clipdpo.errors import UserError
from clipdpo.storage import NotFound, Storage, join, local_model_dir
from clipdpo.tracking import training_callbacks
from clipdpo.train import checkpoint, dist, imagefeatures, layouts, refcache
from clipdpo.train.backends import Backend, DDPBackend, DeepSpeedBackend, frozen_reference
from clipdpo.train.callbacks import (
    METRICS,
    Callback,
    CheckpointCallback,
    MetricsCallback,
    StepStats,
    jsonl,
    metrics_row,
)
from clipdpo.train.config import TrainConfig, accumulation_steps, is_two_stage, run_epochs
from clipdpo.train.data import PairIndex, PairStore, build_index, epoch_order, prefetch, rank_micro_batches
from clipdpo.train.encode import PairEncoder
from clipdpo.train.model import load_model, load_processor, model_signature, prepare_policy, save_hf
from clipdpo.train.objective import DPOObjective
from clipdpo.train.povid import POVIDObjective
from clipdpo.train.schedule import StepPlan, warmup_steps

log = logging.getLogger("clipdpo.train")

SUMMARY = integrity.TRAIN_SUMMARY


class OutputExists(UserError):
    pass


class NoPairs(UserError, ValueError):
    """The pairs artifact is empty: one line for the user, before any model is loaded."""


def run(
    cfg: TrainConfig, input_uri: str, output_uri: str, *, overwrite: bool = False, storage: Storage | None = None
) -> dict:
    """Train on the pairs artifact at `input_uri` into `output_uri`; returns the run's summary.

    One process, or one of many under torchrun. A finished run with the same pairs and config
    returns its stored summary; a killed one resumes from its newest checkpoint."""
    storage = storage or Storage()
    output = output_uri.rstrip("/")
    ctx = dist.init(cfg.collective_timeout_minutes)
    try:
        check_config(cfg, ctx.world_size)
        pairs = open_pairs(storage, input_uri)
        run_fingerprint = output_fingerprint(cfg, pairs)
        finished = prepare_output(ctx, storage, output, run_fingerprint, overwrite)
        if finished is not None:
            return finished
        recipe = TrainRun.setup(ctx, cfg, pairs, output, storage, run_fingerprint)
        # MLflow / TensorBoard only when the environment asks for them (clipdpo.tracking)
        recipe.train([MetricsCallback(cfg.log_steps), CheckpointCallback(cfg.save_steps), *training_callbacks(recipe)])
        return recipe.cleanup()
    finally:
        dist.shutdown(ctx)


def check_config(cfg: TrainConfig, world_size: int) -> None:
    """Refuse settings that cannot work together, before any data or model is read."""
    accumulation_steps(cfg, world_size)  # the global batch must split over this world size
    if is_two_stage(cfg) and (cfg.reference != "model" or cfg.loss_type != "sigmoid"):
        raise ValueError(
            f"method={cfg.method} needs reference=model (the noisy-image rejections change as the policy "
            "trains, so their reference log-probs cannot be precomputed) and loss_type=sigmoid (Eq. 5); "
            f"got reference={cfg.reference}, loss_type={cfg.loss_type}"
        )
    if is_two_stage(cfg) and cfg.forward == "shared_prefix":
        raise ValueError(
            f"method={cfg.method} builds its noisy-image rows from the concatenated layout's rows: "
            "set forward=concatenated (or auto, which takes it for this method)"
        )
    if dist.resolve_strategy(cfg) == "deepspeed" and cfg.zero_stage == 3 and cfg.finetune == "lora":
        raise ValueError(
            "finetune=lora with DeepSpeed zero_stage=3 is not supported (the adapter cannot be saved "
            "from partitioned weights); LoRA weights are small: use zero_stage=2"
        )


def open_pairs(storage: Storage, uri: str) -> Artifact:
    pairs = Artifact.open(storage, uri, kind="pairs")
    if pairs.manifest.rows == 0:
        raise NoPairs(
            f"{uri}: the pairs artifact holds 0 pairs: nothing to train (check the filter stage's thresholds)"
        )
    return pairs


def semantic_config(cfg: TrainConfig) -> dict:
    """The settings that decide what is trained, as the fingerprint has always seen them: flat, POVID's under
    their flat names (so a run trained before they were grouped in `povid` is still the same run)."""
    semantic = {k: v for k, v in config_lib.key_dict(cfg).items() if k != "povid"}  # fields marked NOT_IN_KEY out
    return {**semantic, **cfg.povid.flat_fields()}


def output_fingerprint(cfg: TrainConfig, pairs: Artifact) -> str:
    return fingerprint("model", semantic_config(cfg), [pairs.manifest.fingerprint])


def prepare_output(
    ctx: dist.DistContext, storage: Storage, output: str, run_fingerprint: str, overwrite: bool
) -> dict | None:
    """The stored summary when `output` already holds this run's model; else clear the way (or refuse)."""
    try:
        existing = json.loads(storage.read_bytes(join(output, SUMMARY)))
    except NotFound:
        existing = None
    if existing is not None and existing.get("fingerprint") == run_fingerprint:
        damaged = integrity.damaged(
            storage,
            output,
            integrity.expected_files(existing),
            recorded_unix=integrity.written_at(storage, join(output, SUMMARY)),
        )
        if not damaged:
            log.info("%s already holds this training run's model: nothing to do", output)
            return existing
        log.warning(
            "%s: %d file(s) of the finished model do not verify: %s; the run resumes from its newest "
            "checkpoint to make the model again and writes only the files that differ",
            output,
            len(damaged),
            integrity.describe(damaged),
        )
        return None
    if existing is not None:
        if not overwrite:
            raise OutputExists(
                f"{output} holds a model trained from other pairs or config; write to a new URI or pass --overwrite"
            )
    # another run's checkpoints would be resumed as if they were this run's (an overwrite once resumed them)
    foreign = checkpoint.foreign_steps(storage, output, run_fingerprint)
    if foreign and not overwrite:
        raise OutputExists(
            f"{output} holds checkpoints (steps {foreign}) of a training run with other pairs or "
            "config; write to a new URI or pass --overwrite"
        )
    if ctx.is_main:
        storage.ensure_bucket(output)
        if existing is not None:
            storage.delete(join(output, SUMMARY))
        checkpoint.drop(storage, output, foreign)
    return None


def plan_steps(cfg: TrainConfig, good_pairs: int, world_size: int, pairs_uri: str) -> StepPlan:
    steps_per_epoch = good_pairs // cfg.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{pairs_uri}: {good_pairs} good pairs, fewer than global_batch_size "
            f"{cfg.global_batch_size}: nothing to train"
        )
    total_steps = steps_per_epoch * run_epochs(cfg)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    plan = StepPlan(
        steps_per_epoch, total_steps, warmup_steps(total_steps, cfg.warmup_ratio), accumulation_steps(cfg, world_size)
    )
    log.info(
        "%d good pairs -> %d step(s)/epoch x %d epoch(s) = %d steps (global batch %d = %d per device x %d "
        "accumulation x %d ranks; %d pair(s) per epoch beyond the last full batch are not used)",
        good_pairs,
        steps_per_epoch,
        run_epochs(cfg),
        total_steps,
        cfg.global_batch_size,
        cfg.per_device_batch_size,
        plan.accumulation,
        world_size,
        good_pairs - steps_per_epoch * cfg.global_batch_size,
    )
    return plan


def shared_model_dir(ctx: dist.DistContext, storage: Storage, model: str, scratch: str) -> str:
    """A local folder holding `model`: one copy per node of a model on S3."""
    cache = os.path.join(scratch, "models")
    if ctx.is_local_main:
        local_model_dir(storage, model, cache)
    dist.barrier(ctx)
    return local_model_dir(storage, model, cache)  # complete now: only resolves the path


def forward_setting(cfg: TrainConfig) -> str:
    """cfg.forward, except that POVID's two stages run concatenated rows (check_config refuses shared_prefix)."""
    return "concatenated" if is_two_stage(cfg) else cfg.forward


def make_backend(
    ctx: dist.DistContext, cfg: TrainConfig, model_dir: str, plan: StepPlan, strategy: str
) -> tuple[Backend, dict | None, Any]:
    """(backend, DeepSpeed config or None, what must stay alive while ZeRO-3 models load)."""
    if strategy != "deepspeed":
        policy = prepare_policy(load_model(model_dir, cfg), cfg)
        return DDPBackend(policy, cfg, ctx, plan, layouts.choose(forward_setting(cfg), policy)), None, None
    import deepspeed

    # DeepSpeed keeps its own communication handle (wrapping torchrun's process group); ZeRO-3's
    # sharded loading below already needs it.
    deepspeed.init_distributed(dist_backend="nccl" if ctx.device.type == "cuda" else "gloo")
    ds_config = dist.deepspeed_config(cfg, ctx.world_size, plan.accumulation)
    keep_alive = None
    if cfg.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # while alive, from_pretrained shards at load
    policy = prepare_policy(load_model(model_dir, cfg), cfg)
    layout = layouts.choose(forward_setting(cfg), policy)
    return DeepSpeedBackend(policy, cfg, ctx, plan, ds_config, layout), ds_config, keep_alive


@dataclass
class TrainRun:
    """What a training run sets up once; `train` runs the steps, `cleanup` writes the outputs."""

    ctx: dist.DistContext
    cfg: TrainConfig
    storage: Storage
    output: str
    fingerprint: str
    strategy: str
    plan: StepPlan
    processor: Any
    index: PairIndex
    store: PairStore
    backend: Backend
    checkpoints: checkpoint.Checkpoints
    started: float
    objective: DPOObjective | POVIDObjective | None = None
    reference_cache: str = ""  # the reference log-probs' URI (reference="precompute")
    start_step: int = 0
    metrics: list[dict] = field(default_factory=list)
    zero3_loading: Any = None  # HfDeepSpeedConfig, kept for the run's lifetime (transformers consults it)
    image_features: imagefeatures.ImageFeatureCache | None = None  # a frozen tower's features, once per run
    image_features_off: str = ""  # why there is no image feature cache

    @classmethod
    def setup(
        cls,
        ctx: dist.DistContext,
        cfg: TrainConfig,
        pairs: Artifact,
        output: str,
        storage: Storage,
        run_fingerprint: str,
    ) -> "TrainRun":
        started = time.monotonic()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        scratch = checkpoint.scratch_dir(output)
        model_dir = shared_model_dir(ctx, storage, cfg.model, scratch)
        processor = load_processor(model_dir, cfg)
        encoder = PairEncoder(processor, cfg.max_length)
        pad_token_id = processor.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = processor.tokenizer.eos_token_id
        index = build_index(pairs, encoder, truncate=cfg.truncate_responses, on_bad_pair=cfg.on_bad_pair)
        plan = plan_steps(cfg, len(index), ctx.world_size, pairs.uri)
        strategy = dist.resolve_strategy(cfg)
        backend, ds_config, keep_alive = make_backend(ctx, cfg, model_dir, plan, strategy)
        log.info("strategy %s, forward %s", strategy, backend.layout.name)
        store = PairStore(
            pairs,
            index,
            encoder,
            truncate=cfg.truncate_responses,
            pad_token_id=pad_token_id,
            collate_fn=backend.layout.collate,
        )
        run = cls(
            ctx,
            cfg,
            storage,
            output,
            run_fingerprint,
            strategy,
            plan,
            processor,
            index,
            store,
            backend,
            checkpoint.Checkpoints(ctx, storage, output, scratch, cfg.keep_checkpoints),
            started,
            zero3_loading=keep_alive,
        )
        run.start_image_feature_cache()
        run.objective = run.make_objective(model_dir, encoder, ds_config)
        record = run.checkpoints.restore(backend)
        if record is not None:
            run.start_step, run.metrics = record["step"], record.get("metrics", [])
        return run

    def make_objective(self, model_dir: str, encoder: PairEncoder, ds_config: dict | None):
        """The loss's objective: reference log-probs precomputed once (cached), or a frozen reference model
        each step (POVID's two stages wrap it)."""
        cfg = self.cfg
        if cfg.reference == "precompute":
            return self.precompute_reference(model_dir, encoder)
        reference_base = load_model(model_dir, cfg)
        self.backend.layout.prepare(reference_base)
        reference = frozen_reference(reference_base, self.ctx, self.strategy, ds_config)
        objective = DPOObjective.from_config(cfg, reference_model=reference, layout=self.backend.layout)
        if is_two_stage(cfg):
            return POVIDObjective.from_config(cfg, objective, self.plan.steps_per_epoch)
        return objective

    def start_image_feature_cache(self) -> None:
        policy = self.backend.unwrapped()
        reason = imagefeatures.disabled_reason(
            policy, two_stage=is_two_stage(self.cfg), budget_mb=self.cfg.image_feature_cache_mb
        )
        if reason is None:
            zero3 = self.strategy == "deepspeed" and self.cfg.zero_stage == 3 and self.ctx.distributed
            self.image_features = imagefeatures.ImageFeatureCache(
                policy, self.cfg.image_feature_cache_mb * 2**20, self.any_rank_missing if zero3 else None
            )
            log.info("image features: each image encoded once per run (frozen vision tower)")
        else:
            self.image_features_off = reason
            log.info("image features: encoded on every use, as %s", reason)

    def any_rank_missing(self, missing: bool) -> bool:
        """Whether any rank lacks image features for its batch (collective: every rank calls it)."""
        flags = torch.tensor([int(missing)], device=self.ctx.device)
        return bool(dist.all_reduce_sum(self.ctx, flags).item())

    def with_image_features(self, batch: dict) -> dict:
        """`batch` with its pairs' cached image features (encoding the ones not yet seen), or as it is."""
        if self.image_features is None:
            return batch
        return self.image_features.attach(
            batch, self.backend.layout.pair_images, self.ctx.device, self.backend.unwrapped().dtype
        )

    def precompute_reference(self, model_dir: str, encoder: PairEncoder) -> DPOObjective:
        """The objective with reference log-probs from the cache, computing what it lacks with the policy,
        which before the first step is the reference model (LoRA starts as a no-op)."""
        cfg, pairs = self.cfg, self.store.pairs
        key = refcache.cache_key(pairs, model_signature(model_dir, cfg), encoder, cfg.truncate_responses)
        self.reference_cache = refcache.cache_uri(pairs, key, cfg.reference_cache)
        resumable = checkpoint.complete_steps(self.storage, self.output)
        if resumable and not self.storage.exists(join(self.reference_cache, "manifest.json")):
            raise RuntimeError(
                f"{self.output} has checkpoints but the reference cache {self.reference_cache} is "
                "incomplete: the policy is no longer the reference; delete the checkpoints or "
                "restore the cache"
            )
        self.backend.train(False)
        values = refcache.ensure(
            self.ctx,
            lambda batch: self.backend.logps(self.with_image_features(batch)),
            self.store,
            key,
            self.reference_cache,
            micro_batch=cfg.per_device_batch_size,
        )
        return DPOObjective.from_config(cfg, reference_logps=values)

    def schedule(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(step, micro-batch number, positions) for every micro-batch this rank runs, in order."""
        order_epoch, order, size = -1, None, self.cfg.global_batch_size
        for step in range(self.start_step, self.plan.total_steps):
            epoch, batch_in_epoch = self.plan.position(step)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(self.index, self.cfg.seed, epoch)
            assert order is not None  # set at the first step: an epoch change from -1
            global_batch = order[batch_in_epoch * size : (batch_in_epoch + 1) * size]
            parts = rank_micro_batches(global_batch, self.ctx.rank, self.ctx.world_size, self.plan.accumulation)
            for m, positions in enumerate(parts):
                yield step, m, positions

    def train(self, callbacks: list[Callback]) -> None:
        """Micro-batches, their losses and gradients, optimizer steps; callbacks after each step."""
        last = self.plan.accumulation - 1
        objective = self.objective
        if objective is None:
            raise RuntimeError("the training run's objective is set up before train()")
        self.backend.train(True)
        stats, step_started = StepStats.zero(), time.monotonic()
        for (step, m, positions), cpu_batch in prefetch(self.schedule(), lambda item: self.store.batch(item[2])):
            batch = self.with_image_features({k: v.to(self.ctx.device) for k, v in cpu_batch.items()})
            with self.backend.micro_step(last=m == last):
                losses, chosen_rewards, rejected_rewards = objective.losses(self.backend, batch, positions, step)
                self.backend.backward(losses.mean())
            stats.add(losses, chosen_rewards, rejected_rewards, self.backend.layout.tokens(batch))
            if m < last:
                continue
            grad_norm = self.backend.step()
            totals = dist.all_reduce_sum(self.ctx, stats.values)
            row = metrics_row(
                totals,
                step + 1,
                self.plan.steps_per_epoch,
                self.backend.lr(),
                grad_norm,
                time.monotonic() - step_started,
            )
            for callback in callbacks:
                callback.on_step_end(self, step + 1, row)
            stats, step_started = StepStats.zero(), time.monotonic()
        for callback in callbacks:
            callback.on_train_end(self)

    def cleanup(self) -> dict:
        """The model in Hugging Face format, metrics, then the summary (written last: it marks completion)."""
        local_dir = os.path.join(self.checkpoints.local_root, "final")
        state_dict = self.backend.full_state_dict()  # collective under ZeRO-3: every rank calls it
        if self.ctx.is_main:
            save_hf(self.backend.unwrapped(), self.processor, self.cfg, local_dir, state_dict=state_dict)
        dist.barrier(self.ctx)
        summary = self.summary()
        if self.ctx.is_main:
            summary["files"] = upload_model(self.storage, local_dir, self.output)
            self.storage.write_bytes(join(self.output, METRICS), jsonl(self.metrics))
            self.storage.write_bytes(join(self.output, SUMMARY), json.dumps(summary, indent=2).encode())
            log.info("model -> %s", join(self.output, "model"))
        dist.barrier(self.ctx)
        return summary

    def summary(self) -> dict:
        """What the run did; `cleanup` adds `files`, the model's files as written."""
        return {
            "fingerprint": self.fingerprint,
            "pairs": self.store.pairs.uri,
            "model": join(self.output, "model"),
            "finetune": self.cfg.finetune,
            "steps": self.plan.total_steps,
            "strategy": self.strategy,
            "world_size": self.ctx.world_size,
            "forward": self.backend.layout.name,
            "reference_cache": self.reference_cache,
            "image_features": (
                self.image_features.summary()
                if self.image_features is not None
                else {"cached": False, "reason": self.image_features_off}
            ),
            "code_version": code_version(),
            "config": config_lib.to_dict(self.cfg),
            "data": self.index.summary(),
            "seconds": round(time.monotonic() - self.started, 2),
            "final": self.metrics[-1] if self.metrics else {},
            **({"povid_rank0": self.objective.summary()} if isinstance(self.objective, POVIDObjective) else {}),
        }


def _stored_intact(storage: Storage, output: str) -> dict[str, integrity.Expected]:
    """The model files a summary of this output records that still verify (none when there is no summary)."""
    try:
        summary = json.loads(storage.read_bytes(join(output, SUMMARY)))
    except (NotFound, ValueError):
        return {}
    recorded = integrity.expected_files(summary)
    damaged = integrity.damaged(
        storage, output, recorded, recorded_unix=integrity.written_at(storage, join(output, SUMMARY))
    )
    return {item.relative: item for item in recorded if item.relative not in damaged}


def upload_model(storage: Storage, local_dir: str, output: str) -> dict[str, dict]:
    """Upload the saved model under `<output>/model/`, skipping each file the output already holds intact with
    the same bytes (a repair rewrites only what was damaged); {relative path: bytes, sha256, etag}."""
    intact = _stored_intact(storage, output)
    stored = {info.uri: info for info in storage.list_info(join(output, "model"))}
    files: dict[str, dict] = {}
    for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        relative = f"model/{path.relative_to(local_dir).as_posix()}"
        target = join(output, relative)
        size, digest = path.stat().st_size, integrity.sha256_of(storage, str(path))
        known = intact.get(relative)
        if known is not None and known.sha256 == digest:
            etag = known.etag  # verified against the summary: not read again
        elif target in stored and stored[target].size == size and integrity.sha256_of(storage, target) == digest:
            etag = integrity.store_etag(storage, target)  # no record (a lost summary): verified by reading it
        else:
            storage.upload_file(str(path), target)
            etag = integrity.store_etag(storage, target)
        files[relative] = {"bytes": size, "sha256": digest, "etag": etag}
    return files
