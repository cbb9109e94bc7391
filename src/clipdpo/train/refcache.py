"""Reference log-probs computed once, stored beside the pairs, reused by later runs.

The cache is an ordinary clipdpo artifact (kind "reflogps") at
`<pairs>/refcache/<key>`, where the key hashes what the numbers depend on: the pairs artifact,
the reference model (id, revision, config, weight files, dtype) and the tokenisation (chat
template, max_length, truncation). Another run with the same three finds it complete and skips
the pass; a pass killed half-way resumes from its finished chunks. Work is cut into chunks of
the good-pair index; every rank runs the same number of forwards per chunk (ZeRO-3 gathers
parameters collectively), results are gathered and rank 0 writes the chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow as pa
import torch

from clipdpo.artifacts import Artifact, ArtifactWriter, shard_name
from clipdpo.storage import join
from clipdpo.train import dist
from clipdpo.train.data import PairIndex, PairStore, prefetch
from clipdpo.train.encode import PairEncoder

log = logging.getLogger("clipdpo.train")

CACHE_FORMAT = 1
VALUE_COLUMNS = ["chosen_logp", "rejected_logp", "chosen_logp_mean", "rejected_logp_mean"]


def cache_key(pairs: Artifact, model_signature: dict, encoder: PairEncoder, truncate: bool) -> dict:
    """Everything the cached numbers depend on (hashed into the cache's URI)."""
    return {
        "format": CACHE_FORMAT,
        "pairs_fingerprint": pairs.manifest.fingerprint,
        "reference_model": model_signature,
        "chat_template_sha256": hashlib.sha256(
            (getattr(encoder.processor, "chat_template", None) or "").encode()
        ).hexdigest(),
        "max_length": encoder.max_length,
        "truncate_responses": truncate,
    }


def cache_uri(pairs: Artifact, key: dict, override: str = "") -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return join(override, digest) if override else join(pairs.uri, "refcache", digest)


def chunk_bounds(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]


@torch.no_grad()
def batch_logps(logps, batch: dict) -> torch.Tensor:
    """[n, 4]: chosen sum, rejected sum, chosen mean, rejected mean, for one batch of n pairs.

    `logps(batch)`: (sums, means, counts) over its 2n responses, chosen first (a backend's `logps`)."""
    sums, means, _ = logps(batch)
    n = len(sums) // 2
    return torch.stack([sums[:n], sums[n:], means[:n], means[n:]], dim=1).double().cpu()


def ensure(ctx: dist.DistContext, logps, store: PairStore, key: dict, uri: str, *, micro_batch: int) -> np.ndarray:
    """[len(index), 4] reference log-probs in index order, computing the missing chunks."""
    pairs = store.pairs
    writer = ArtifactWriter(pairs.storage, uri, "reflogps", key, [pairs], overwrite=True)
    bounds = chunk_bounds(len(store.index), ctx.world_size * micro_batch * 16)
    names = [shard_name(i) for i in range(len(bounds))]
    if writer.is_complete():
        log.info("reference log-probs: reusing %s", uri)
        return load(pairs.storage, uri, store.index)
    todo = [i for i, name in enumerate(names) if writer.done_record(name) is None]
    todo = dist.broadcast_object(ctx, todo)  # every rank must run the same chunks
    log.info("reference log-probs: %d of %d chunk(s) to compute -> %s", len(todo), len(names), uri)
    for i in todo:
        rows = _chunk_rows(ctx, logps, store, np.arange(*bounds[i]), micro_batch)
        gathered = dist.all_gather_objects(ctx, rows)
        if ctx.is_main:
            merged = sorted(row for rank_rows in gathered for row in rank_rows)
            writer.write_shard(names[i], _table(store.index, merged), {"pairs": len(merged)})
        dist.barrier(ctx)
    if ctx.is_main:
        writer.finalize(names)
    dist.barrier(ctx)
    return load(pairs.storage, uri, store.index)


def _chunk_rows(
    ctx: dist.DistContext, logps, store: PairStore, positions: np.ndarray, micro_batch: int
) -> list[tuple[int, list[float]]]:
    """This rank's (position, values) rows of one chunk. Every rank runs the same number of forwards (ZeRO-3
    gathers parameters collectively): a rank whose share runs out repeats a row and drops its result."""
    mine = positions[ctx.rank :: ctx.world_size]
    steps = -(-len(positions) // (ctx.world_size * micro_batch))
    parts = []
    for s in range(steps):
        part = mine[s * micro_batch : (s + 1) * micro_batch]
        parts.append((part if len(part) else positions[:1], len(part)))
    rows: list[tuple[int, list[float]]] = []
    for (part, real), cpu_batch in prefetch(parts, lambda item: store.batch(item[0])):
        values = batch_logps(logps, cpu_batch)
        rows.extend(zip(part[:real].tolist(), values[:real].tolist()))
    return rows


def _table(index: PairIndex, rows: list[tuple[int, list[float]]]) -> pa.Table:
    positions = np.asarray([p for p, _ in rows], np.int64)
    values = np.asarray([v for _, v in rows], np.float64).reshape(-1, 4)
    return pa.table(
        {
            "pair_shard": pa.array([index.shard_names[s] for s in index.shard[positions]], pa.string()),
            "row": pa.array(index.row[positions], pa.int32()),
            "chosen_logp": values[:, 0],
            "rejected_logp": values[:, 1],
            "chosen_logp_mean": values[:, 2],
            "rejected_logp_mean": values[:, 3],
        }
    )


def load(storage, uri: str, index: PairIndex) -> np.ndarray:
    """The cache's values aligned to `index` positions; every good pair must be present."""
    cache = Artifact.open(storage, uri, kind="reflogps")
    shard_number = {name: i for i, name in enumerate(index.shard_names)}
    keys, values = [], []
    for _, table in cache.iter_shards():
        shards = np.asarray([shard_number.get(name, -1) for name in table.column("pair_shard").to_pylist()], np.int64)
        keys.append(shards << 32 | table.column("row").to_numpy().astype(np.int64))
        values.append(np.stack([table.column(c).to_numpy() for c in VALUE_COLUMNS], axis=1))
    keys_all = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    values_all = np.concatenate(values) if values else np.zeros((0, 4))
    order = np.argsort(keys_all)
    keys_all, values_all = keys_all[order], values_all[order]
    wanted = index.shard.astype(np.int64) << 32 | index.row.astype(np.int64)
    found = np.searchsorted(keys_all, wanted).clip(max=max(len(keys_all) - 1, 0))
    hit = (len(keys_all) > 0) & (keys_all[found] == wanted) if len(keys_all) else np.zeros(len(wanted), bool)
    if not hit.all():
        position = int(np.flatnonzero(~hit)[0])
        raise ValueError(
            f"{uri}: no reference log-probs for pair {index.row_id(position)} ({int((~hit).sum())} missing)"
        )
    return values_all[found]
