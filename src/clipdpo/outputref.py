"""A pipeline step's output as a versioned reference, `<uri>#<version>`, and whether a cached one still holds.

kfp caches a step by its inputs: its configs and the values the steps before it returned. A step that
returned a bare URI returned the same string whatever it wrote there, so after a config change the step
that changed reran but every later one stayed cached on the old result. So each step
returns its URI with the version of what it wrote, read from the artifact's completion marker (`version`):
a data artifact's manifest fingerprint, the training summary's fingerprint, or a digest of the object
(an evaluation's task record, its metrics.json, the run report's report.html, a later round's round.json). A
shard of a fan-out, whose artifact has no marker yet, returns a digest of its input's version and its config
instead, marked `in-` (`shard_ref`).

kfp's local cache keeps those references, and trusted any of them even after their artifact was deleted
(item 7). `trusted` is the runner's check before a run: an entry whose artifact is gone, incomplete, or now
holds another version is dropped, so that step reruns, and with it every step whose inputs then change.
"""

from __future__ import annotations

import hashlib
import json

from clipdpo.storage import NotFound, Storage, is_remote, join

SEPARATOR = "#"
SHARD = "in-"  # a shard's version: its input and config, not an artifact's marker
# Completion markers of a prefix, in order; the first one present versions it.
FINGERPRINTED = ("manifest.json", "train_summary.json")  # JSON holding the artifact's fingerprint
ROUND_RECORD = "round.json"  # a later round's root: what the round starts from (clipdpo.steps.round_start_step)
# the evaluation: its metrics; the run report: its page (written last); a later round's root: its record
DIGESTED = ("metrics.json", "report.html", ROUND_RECORD)


def split(ref: str) -> tuple[str, str]:
    """`<uri>#<version>` -> (uri, version); a bare URI has version ""."""
    uri, _, version = ref.partition(SEPARATOR)
    return uri, version


def plain(ref: str) -> str:
    """The URI of a reference (a bare URI stays as it is)."""
    return split(ref)[0]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read(storage: Storage, uri: str) -> bytes | None:
    try:
        return storage.read_bytes(uri)
    except (NotFound, IsADirectoryError):  # a local prefix is a folder
        return None


def version(storage: Storage, uri: str) -> str:
    """What `uri` holds now: its marker's fingerprint or digest; "" when nothing complete is there."""
    for name in FINGERPRINTED:
        data = _read(storage, join(uri, name))
        if data is not None:
            try:
                return str(json.loads(data)["fingerprint"])[:16]
            except (ValueError, KeyError, TypeError):
                return ""  # a torn marker: not complete
    for name in DIGESTED:
        data = _read(storage, join(uri, name))
        if data is not None:
            return _digest(data)
    data = None if uri.endswith("/") else _read(storage, uri)
    return "" if data is None else _digest(data)


def ref(storage: Storage, uri: str) -> str:
    """`uri` with the version of what it holds (bare when nothing complete is there, e.g. a cluster job's
    output seen before its summary was written)."""
    current = version(storage, uri)
    return f"{uri}{SEPARATOR}{current}" if current else uri


def shard_ref(storage: Storage, uri: str, input_uri: str, config: dict) -> str:
    """A fan-out shard's output: `uri` versioned by its input's version and its config."""
    identity = json.dumps({"input": version(storage, input_uri), "config": config}, sort_keys=True, default=str)
    return f"{uri}{SEPARATOR}{SHARD}{_digest(identity.encode())}"


def trusted(storage: Storage, reference: str) -> bool:
    """Whether a cached step output still holds: its artifact is complete and (when the reference is
    versioned by one) its marker is the version the step returned. A shard's reference needs its artifact
    complete (a shard of an unfinished fan-out reruns; the stage skips its finished shards)."""
    uri, expected = split(reference)
    current = version(storage, uri)
    if not current:
        return False
    return not expected or expected.startswith(SHARD) or expected == current


def is_reference(value: object) -> bool:
    """A step output naming a storage location (an s3:// URI or an absolute path), not a plan or a number."""
    return isinstance(value, str) and (is_remote(value) or value.startswith("/"))
