"""Artifacts: a prefix holding Parquet shards, one done-record per shard, and `manifest.json`.

Layout under an artifact URI:

    data/<shard>.parquet     the rows (written atomically)
    _done/<shard>.json       written after its data file: rows, sha256, stats, fingerprint
    manifest.json            written last; its presence is what makes the artifact complete

A stage is idempotent and resumable through this: a shard whose done-record carries the
current fingerprint is skipped; a manifest with the current fingerprint skips the stage. A
reader refuses a prefix with no manifest, checks each shard's sha256 and schema, and so never
reads a half-written output as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from clipdpo import __version__
from clipdpo.schemas import SCHEMA_VERSION, validate_table
from clipdpo.storage import NotFound, Storage, join

MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact is incomplete, corrupt, or not what the caller expected."""


def code_version() -> str:
    """Package version plus git commit when known (images bake CLIPDPO_GIT_SHA in)."""
    sha = os.environ.get("CLIPDPO_GIT_SHA")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=os.path.dirname(__file__),
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def fingerprint(kind: str, config: dict[str, Any], input_fingerprints: list[str]) -> str:
    """What makes two runs of a stage interchangeable: kind, schema, config and inputs."""
    payload = json.dumps(
        {"kind": kind, "schema_version": SCHEMA_VERSION, "config": config, "inputs": input_fingerprints},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass
class ShardRecord:
    name: str
    rows: int
    sha256: str
    bytes: int
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class Manifest:
    kind: str
    fingerprint: str
    shards: list[ShardRecord]
    config: dict[str, Any]
    inputs: list[str]
    code_version: str
    stats: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_unix: float = 0.0

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def to_json(self) -> str:
        body = asdict(self)
        body["counts"] = {"rows": self.rows, "shards": len(self.shards)}
        return json.dumps(body, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            body = json.loads(text)
            body.pop("counts", None)
            body["shards"] = [ShardRecord(**shard) for shard in body["shards"]]
            return cls(**body)
        except (ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{where}: not a valid clipdpo manifest ({err})") from err


class ArtifactWriter:
    """Writes one artifact shard by shard; `finalize` writes the manifest."""

    def __init__(
        self,
        storage: Storage,
        uri: str,
        kind: str,
        config: dict[str, Any],
        inputs: list["Artifact"],
        *,
        overwrite: bool = False,
    ):
        self.storage = storage
        self.uri = uri.rstrip("/")
        self.kind = kind
        self.config = config
        self.input_uris = [artifact.uri for artifact in inputs]
        self.fingerprint = fingerprint(kind, config, [artifact.manifest.fingerprint for artifact in inputs])
        storage.ensure_bucket(self.uri)
        existing = self._existing_manifest()
        if existing is not None and existing.fingerprint != self.fingerprint and not overwrite:
            raise ArtifactError(
                f"{self.uri} already holds a complete {existing.kind!r} artifact made from other inputs or "
                f"config (fingerprint {existing.fingerprint[:12]} != {self.fingerprint[:12]}); "
                "write to a new URI or pass --overwrite"
            )
        if existing is not None and existing.fingerprint != self.fingerprint:
            self.storage.delete(join(self.uri, MANIFEST))

    def _existing_manifest(self) -> Manifest | None:
        where = join(self.uri, MANIFEST)
        try:
            return Manifest.from_json(self.storage.read_bytes(where).decode(), where)
        except NotFound:
            return None

    def is_complete(self) -> bool:
        manifest = self._existing_manifest()
        return manifest is not None and manifest.fingerprint == self.fingerprint

    def done_record(self, name: str) -> ShardRecord | None:
        """The shard's record if it was finished by a run with the same fingerprint."""
        where = join(self.uri, "_done", f"{name}.json")
        try:
            record = ShardRecord(**json.loads(self.storage.read_bytes(where)))
        except NotFound:
            return None
        except (ValueError, TypeError):
            return None  # a torn or foreign record: redo the shard
        if record.fingerprint != self.fingerprint:
            return None
        return record

    def write_shard(self, name: str, table: pa.Table, stats: dict[str, Any] | None = None) -> ShardRecord:
        table = validate_table(table, self.kind, where=f"{self.uri} shard {name}")
        data_uri = join(self.uri, "data", f"{name}.parquet")
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            pq.write_table(table, tmp.name, compression="zstd")
            size = os.path.getsize(tmp.name)
            digest = self.storage.upload_file(tmp.name, data_uri)
        record = ShardRecord(name, table.num_rows, digest, size, stats or {}, self.fingerprint)
        # The done-record goes second: a crash between the two leaves the shard to be redone.
        self.storage.write_bytes(join(self.uri, "_done", f"{name}.json"), json.dumps(asdict(record)).encode())
        return record

    def finalize(
        self,
        shard_names: list[str],
        summarize: Callable[[list[ShardRecord]], dict[str, Any]] | None = None,
    ) -> Manifest:
        """Write the manifest once every shard is done; `summarize` turns the records into its stats."""
        records = []
        missing = []
        for name in shard_names:
            record = self.done_record(name)
            if record is None:
                missing.append(name)
            else:
                records.append(record)
        if missing:
            raise ArtifactError(
                f"{self.uri}: cannot finalize, {len(missing)} shard(s) not finished: {missing[:10]}"
                + (" ..." if len(missing) > 10 else "")
            )
        manifest = Manifest(
            kind=self.kind,
            fingerprint=self.fingerprint,
            shards=records,
            config=self.config,
            inputs=self.input_uris,
            code_version=code_version(),
            stats=summarize(records) if summarize else {},
            created_unix=time.time(),
        )
        self.storage.write_bytes(join(self.uri, MANIFEST), manifest.to_json().encode())
        return manifest


class Artifact:
    """A complete artifact opened for reading."""

    def __init__(self, storage: Storage, uri: str, manifest: Manifest):
        self.storage = storage
        self.uri = uri.rstrip("/")
        self.manifest = manifest

    @classmethod
    def open(cls, storage: Storage, uri: str, kind: str | None = None) -> "Artifact":
        where = join(uri, MANIFEST)
        try:
            text = storage.read_bytes(where).decode()
        except NotFound:
            raise ArtifactError(
                f"{uri}: no {MANIFEST}: the artifact is missing or its stage has not finished"
            ) from None
        manifest = Manifest.from_json(text, where)
        if manifest.schema_version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{where}: schema_version {manifest.schema_version}, this code reads {SCHEMA_VERSION}"
            )
        if kind is not None and manifest.kind != kind:
            raise ArtifactError(f"{where}: holds a {manifest.kind!r} artifact, expected {kind!r}")
        return cls(storage, uri, manifest)

    @property
    def shard_names(self) -> list[str]:
        return [shard.name for shard in self.manifest.shards]

    def shard_uri(self, name: str) -> str:
        return join(self.uri, "data", f"{name}.parquet")

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read one shard, verifying its checksum and schema against the manifest."""
        record = next((shard for shard in self.manifest.shards if shard.name == name), None)
        if record is None:
            raise ArtifactError(f"{self.uri}: no shard {name!r} in the manifest")
        where = self.shard_uri(name)
        data = self.storage.read_bytes(where)
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise ArtifactError(f"{where}: sha256 {digest[:12]} does not match the manifest ({record.sha256[:12]})")
        try:
            # Only the requested columns are decoded: the filter never decodes what it ignores.
            table = pq.read_table(pa.BufferReader(data), columns=columns)
        except (pa.ArrowInvalid, OSError) as err:
            raise ArtifactError(f"{where}: not a readable Parquet file ({err})") from err
        table = validate_table(table, self.manifest.kind, where=where, columns=columns)
        if table.num_rows != record.rows:
            raise ArtifactError(f"{where}: {table.num_rows} rows, manifest says {record.rows}")
        return table

    def iter_shards(self, columns: list[str] | None = None) -> Iterator[tuple[str, pa.Table]]:
        for name in self.shard_names:
            yield name, self.read_shard(name, columns)

    def upstream(self, kind: str) -> "Artifact":
        """The nearest input artifact of `kind`, following manifests' input URIs."""
        frontier = list(self.manifest.inputs)
        seen: set[str] = set()
        while frontier:
            uri = frontier.pop(0)
            if uri in seen:
                continue
            seen.add(uri)
            artifact = Artifact.open(self.storage, uri)
            if artifact.manifest.kind == kind:
                return artifact
            frontier.extend(artifact.manifest.inputs)
        raise ArtifactError(f"{self.uri}: no {kind!r} artifact among its inputs")
