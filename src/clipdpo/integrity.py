"""Whether the files a finished output names are still the bytes it recorded.

A finished output (an artifact's manifest, a training run's summary) records each file's size and
sha256, and on S3 the ETag the store gave it. Checking them is cheap by default and complete on
request:

- sizes always, from one listing of the folder;
- the store's checksum where it gives one: on S3 the listing's ETag against the recorded one (an
  object replaced by other bytes has another ETag);
- the sha256, by reading the file, for a file written after the record that names it (a later write
  is a sign of damage, e.g. a byte flipped in place on a local disk), and for every file when
  `CLIPDPO_VERIFY=full` (a stage's `--verify full`) asks for it.

What does not verify is named with the reason; the stage that wrote it redoes exactly those files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from clipdpo.errors import UserError
from clipdpo.storage import NotFound, ObjectInfo, Storage, is_remote, join

VERIFY_ENV = "CLIPDPO_VERIFY"
TRAIN_SUMMARY = "train_summary.json"  # a training run's completion record; its `files` name the model's files
VERIFY_MODES = ("cheap", "full")


def verify_mode() -> str:
    """`cheap` (the default) or `full`, from CLIPDPO_VERIFY."""
    mode = os.environ.get(VERIFY_ENV, "").strip() or "cheap"
    if mode not in VERIFY_MODES:
        raise UserError(f"{VERIFY_ENV}={mode!r}: expected one of {list(VERIFY_MODES)}")
    return mode


@dataclass(frozen=True)
class Expected:
    """What a finished output recorded about one of its files."""

    relative: str  # path below the output's URI
    bytes: int
    sha256: str
    etag: str = ""  # the store's ETag when written (S3); "" where the store gives none


def expected_files(summary: dict) -> list[Expected]:
    """The files a completion record lists under `files` ({relative: {bytes, sha256, etag}}); [] when none."""
    files = summary.get("files") if isinstance(summary, dict) else None
    if not isinstance(files, dict):
        return []
    return [
        Expected(relative, int(info["bytes"]), str(info["sha256"]), str(info.get("etag", "")))
        for relative, info in sorted(files.items())
    ]


def sha256_of(storage: Storage, uri: str) -> str:
    digest = hashlib.sha256()
    for chunk in storage.iter_chunks(uri):
        digest.update(chunk)
    return digest.hexdigest()


def listing(storage: Storage, base: str, folders: set[str]) -> dict[str, ObjectInfo]:
    """The objects under each folder of `base`, by path relative to `base` (one listing per folder)."""
    found: dict[str, ObjectInfo] = {}
    for folder in sorted(folders):
        for info in storage.list_info(join(base, folder) if folder else base):
            found[info.uri[len(base.rstrip("/")) + 1 :]] = info
    return found


def damaged(
    storage: Storage, base: str, expected: list[Expected], *, recorded_unix: float, full: bool | None = None
) -> dict[str, str]:
    """{relative path: why} for each expected file under `base` that is missing or not what was recorded.

    `recorded_unix`: when the record naming the files was written; a file modified after it has its
    sha256 checked. `full` (default: CLIPDPO_VERIFY) checks every file's sha256."""
    full = verify_mode() == "full" if full is None else full
    found = listing(storage, base, {item.relative.rpartition("/")[0] for item in expected})
    problems: dict[str, str] = {}
    for item in expected:
        info = found.get(item.relative)
        if info is None:
            problems[item.relative] = "missing"
        elif info.size != item.bytes:
            problems[item.relative] = f"{info.size} bytes, recorded {item.bytes}"
        elif item.etag and is_remote(base) and info.version != item.etag:
            problems[item.relative] = f"ETag {info.version}, recorded {item.etag} (other bytes)"
        elif full or info.modified_unix > recorded_unix:
            try:
                digest = sha256_of(storage, join(base, item.relative))
            except NotFound:
                problems[item.relative] = "missing"
                continue
            if digest != item.sha256:
                problems[item.relative] = f"sha256 {digest[:12]}, recorded {item.sha256[:12]}"
    return problems


def written_at(storage: Storage, uri: str) -> float:
    """When the object at `uri` was last written (0.0 when it is missing)."""
    try:
        return storage.info(uri).modified_unix
    except NotFound:
        return 0.0


def store_etag(storage: Storage, uri: str) -> str:
    """The ETag the store keeps for an object just written (S3); "" locally, where there is none."""
    return storage.info(uri).version if is_remote(uri) else ""


def describe(problems: dict[str, str], limit: int = 5) -> str:
    items = [f"{name} ({why})" for name, why in sorted(problems.items())]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
