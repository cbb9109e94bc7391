"""Training checkpoints on S3: `<output>/checkpoints/step-XXXXXXXX/`, complete when `COMPLETE` exists.

Each node's local rank 0 uploads what its node's ranks wrote (ZeRO partitions differ per rank);
rank 0 writes `COMPLETE` (with step and metrics so far) after every node has uploaded. Resume
takes the newest complete checkpoint; older ones beyond `keep` are deleted after a new one lands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipdpo.storage import NotFound, Storage, join, upload_tree
from clipdpo.train import dist

if TYPE_CHECKING:  # the backend's modules load torch and the model code, which reading checkpoints never needs
    from clipdpo.train.backends import Backend

log = logging.getLogger("clipdpo.train")

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"/checkpoints/step-(\d{8})/")


def checkpoint_uri(output: str, step: int) -> str:
    return join(output, "checkpoints", f"step-{step:08d}")


def complete_steps(storage: Storage, output: str) -> list[int]:
    steps = set()
    for uri in storage.list(join(output, "checkpoints")):
        match = _STEP_DIR.search(uri)
        if match and uri.endswith("/" + MARKER):
            steps.add(int(match.group(1)))
    return sorted(steps)


def foreign_steps(storage: Storage, output: str, fingerprint: str) -> list[int]:
    """Complete checkpoints that another training run (another fingerprint: other pairs or config) left."""
    foreign = []
    for step in complete_steps(storage, output):
        try:
            record = json.loads(storage.read_bytes(join(checkpoint_uri(output, step), MARKER)))
        except (NotFound, ValueError):
            record = {}
        if record.get("fingerprint") != fingerprint:
            foreign.append(step)
    return foreign


def drop(storage: Storage, output: str, steps: list[int]) -> None:
    """Delete these checkpoints, their COMPLETE marker first (a half-deleted one is then not complete)."""
    for step in steps:
        storage.delete(join(checkpoint_uri(output, step), MARKER))
        for item in storage.list(checkpoint_uri(output, step)):
            storage.delete(item)


@dataclass(frozen=True)
class Checkpoints:
    """The run's checkpoints under `<output>/checkpoints/`, staged through node-local `local_root`."""

    ctx: dist.DistContext
    storage: Storage
    output: str
    local_root: str
    keep: int

    def save(self, backend: "Backend", step: int, state: dict) -> None:
        """Collective: every rank writes its part, each node's local rank 0 uploads, rank 0 marks it complete."""
        ctx, storage = self.ctx, self.storage
        local_dir = os.path.join(self.local_root, f"ckpt-{step:08d}")
        if ctx.is_local_main:
            shutil.rmtree(local_dir, ignore_errors=True)
            os.makedirs(local_dir)
        dist.barrier(ctx)
        backend.save(local_dir)
        dist.barrier(ctx)
        uri = checkpoint_uri(self.output, step)
        if ctx.is_local_main:
            upload_tree(storage, local_dir, uri)
            shutil.rmtree(local_dir, ignore_errors=True)
        dist.barrier(ctx)
        if ctx.is_main:
            storage.write_bytes(join(uri, MARKER), json.dumps({"step": step, **state}).encode())
            for old in complete_steps(storage, self.output)[: -self.keep] if self.keep > 0 else []:
                for item in storage.list(checkpoint_uri(self.output, old)):
                    storage.delete(item)
            log.info("checkpoint step %d -> %s", step, uri)
        dist.barrier(ctx)

    def restore(self, backend: "Backend") -> dict | None:
        """Load the newest complete checkpoint into `backend`; its COMPLETE record, or None."""
        ctx, storage = self.ctx, self.storage
        steps = complete_steps(storage, self.output) if ctx.is_main else None
        steps = dist.broadcast_object(ctx, steps)
        if not steps:
            return None
        uri = checkpoint_uri(self.output, steps[-1])
        local_dir = os.path.join(self.local_root, f"restore-{steps[-1]:08d}")
        if ctx.is_local_main:
            shutil.rmtree(local_dir, ignore_errors=True)
            prefix = uri.rstrip("/")
            for item in storage.list(prefix):
                storage.download_file(item, os.path.join(local_dir, item[len(prefix) + 1 :]))
        dist.barrier(ctx)
        backend.load(local_dir)
        try:
            record = json.loads(storage.read_bytes(join(uri, MARKER)))
        except NotFound:
            raise RuntimeError(f"{uri}: {MARKER} vanished while restoring") from None
        dist.barrier(ctx)
        if ctx.is_local_main:
            shutil.rmtree(local_dir, ignore_errors=True)
        log.info("resumed from %s (step %d)", uri, record["step"])
        return record


def scratch_dir(output: str) -> str:
    """A node-local folder shared by the node's ranks (DeepSpeed writes one checkpoint folder per node)."""
    import hashlib

    root = os.environ.get("CLIPDPO_SCRATCH", tempfile.gettempdir())
    path = os.path.join(root, "clipdpo-train-" + hashlib.sha256(output.encode()).hexdigest()[:12])
    os.makedirs(path, exist_ok=True)
    return path
