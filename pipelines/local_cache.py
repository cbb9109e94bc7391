"""kfp's local cache, checked before a local run: entries whose outputs are gone, replaced or damaged go.

kfp's local runner keys a cache entry by the step's inputs and, on a hit, trusts the outputs it stored:
the URIs the steps returned on S3 it never checks. Deleting the loopback S3 data (`.local/s3`) left
every step "cached" and the run "succeeded" with no artifacts. Before a run, `prune` reads every entry
and drops those whose step output no longer holds (clipdpo.outputref.trusted: the artifact is gone,
incomplete, or holds another version), so kfp runs that step again; the versions the steps return then
rerun the steps after it where their input changed.

A complete output whose files no longer verify (a shard deleted, truncated or rewritten: clipdpo.integrity,
sizes and the store's checksums; every sha256 with CLIPDPO_VERIFY=full) is dropped too: its step reruns and
redoes exactly the damaged files, and its version (the fingerprint) stays, so the steps after it stay cached.
"""

from __future__ import annotations

import json
import os

from clipdpo import integrity, outputref
from clipdpo.artifacts import MANIFEST, ArtifactError, Manifest, damaged_shards
from clipdpo.storage import NotFound, Storage, join

CACHE_FOLDER = ".kfp_cache"  # kfp.local's default cache root under the pipeline root (kfp 2.17)


def damaged_files(storage: Storage, uri: str) -> dict[str, str]:
    """{file: why} for the files a complete output names that do not verify: an artifact's shards (its
    manifest), a training run's model files (its summary's `files`)."""
    try:
        manifest = Manifest.from_json(storage.read_bytes(join(uri, MANIFEST)).decode(), join(uri, MANIFEST))
        return damaged_shards(storage, uri, manifest)
    except (NotFound, IsADirectoryError):
        pass
    except (ArtifactError, UnicodeDecodeError) as err:
        return {MANIFEST: str(err)}
    summary_uri = join(uri, integrity.TRAIN_SUMMARY)
    try:
        summary = json.loads(storage.read_bytes(summary_uri))
    except (NotFound, IsADirectoryError):
        return {}
    except ValueError as err:
        return {integrity.TRAIN_SUMMARY: f"not JSON ({err})"}
    return integrity.damaged(
        storage,
        uri.rstrip("/"),
        integrity.expected_files(summary),
        recorded_unix=integrity.written_at(storage, summary_uri),
    )


def stale_outputs(entry: dict, storage: Storage) -> list[str]:
    """The step outputs of one cache entry that no longer hold (its plans and numbers are not checked)."""
    return [
        value
        for value in entry.values()
        if outputref.is_reference(value)
        and (not outputref.trusted(storage, value) or damaged_files(storage, outputref.plain(value)))
    ]


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
