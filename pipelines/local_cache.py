"""kfp's local cache, checked before a local run (issue 12, item 7).

kfp's local runner keys a cache entry by the step's inputs and, on a hit, trusts the outputs it stored:
the URIs the steps returned on S3 it never checks. Deleting the loopback S3 data (`.local/s3`) left
every step "cached" and the run "succeeded" with no artifacts. Before a run, `prune` reads every entry
and drops those whose step output no longer holds (clipdpo.outputref.trusted: the artifact is gone,
incomplete, or holds another version), so kfp runs that step again; the versions the steps return then
rerun the steps after it where their input changed.
"""

from __future__ import annotations

import json
import os

from clipdpo import outputref
from clipdpo.storage import Storage

CACHE_FOLDER = ".kfp_cache"  # kfp.local's default cache root under the pipeline root (kfp 2.17)


def stale_outputs(entry: dict, storage: Storage) -> list[str]:
    """The step outputs of one cache entry that no longer hold (its plans and numbers are not checked)."""
    return [value for value in entry.values()
            if outputref.is_reference(value) and not outputref.trusted(storage, value)]


def prune(pipeline_root: str, storage: Storage) -> tuple[int, list[str]]:
    """Drop the cache entries whose outputs no longer hold; (entries read, outputs of the dropped ones)."""
    folder = os.path.join(pipeline_root, CACHE_FOLDER)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    dropped = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            entry = json.loads(open(path).read())
        except (OSError, ValueError):
            entry = None  # kfp treats an unreadable entry as a miss too; drop it
        stale = stale_outputs(entry, storage) if isinstance(entry, dict) else [path]
        if stale:
            os.remove(path)
            dropped += stale
    return len(names), dropped
