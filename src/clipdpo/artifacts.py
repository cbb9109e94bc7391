"""Artifacts: a prefix holding Parquet shards, one done-record per shard, and `manifest.json`.

Layout under an artifact URI (`<fp>`: the first 16 hex digits of the run's fingerprint):

    data/<fp>/<shard>.parquet    the rows (written atomically)
    _done/<fp>/<shard>.json      written after its data file: rows, sha256, stats, fingerprint
    manifest.json                written last; its presence is what makes the artifact complete

A stage is idempotent and resumable through this: a shard whose done-record carries the
current fingerprint and whose data file still has the recorded sha256 is skipped; a manifest
with the current fingerprint whose shards all verify (clipdpo.integrity: sizes always, the store's
checksum where it gives one, sha256 where a shard was rewritten or `--verify full` asks) skips the
stage, and one with damaged shards makes the stage redo exactly those. A reader refuses a prefix
with no manifest, checks each shard's sha256 and schema, and so never reads a half-written output
as complete.

`--overwrite` never deletes first: the new run writes under its own `<fp>` folders while the old
manifest (and so the old artifact) stays readable; writing the new manifest is the swap; only
then is every object the new manifest does not name deleted. Manifests from before this layout
name `data_dir: "data"` (or nothing) and stay readable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from clipdpo import __version__, integrity
from clipdpo.errors import UserError
from clipdpo.lease import Lease, LeaseHeld
from clipdpo.schemas import SCHEMA_VERSION, validate_table
from clipdpo.storage import NotFound, Storage, check_location, is_remote, join, local_folder_problem

MANIFEST = "manifest.json"
ARTIFACT_FOLDERS = ("data/", "_done/", "export/")

log = logging.getLogger("clipdpo.artifacts")


class ArtifactError(RuntimeError, UserError):
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
    etag: str = ""  # the store's ETag of the data file (S3): a listing then verifies its bytes cheaply


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
    data_dir: str = "data"  # where the shards lie below the artifact URI

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def to_json(self) -> str:
        body = asdict(self)
        body["counts"] = {"rows": self.rows, "shards": len(self.shards)}
        # allow_nan=False: a bare NaN is not JSON; other readers (and jq) would refuse the manifest
        return json.dumps(body, indent=2, sort_keys=True, default=str, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            body = json.loads(text)
            body.pop("counts", None)
            body["shards"] = [ShardRecord(**shard) for shard in body["shards"]]
            return cls(**body)
        except (ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{where}: not a valid clipdpo manifest ({err})") from err


def damaged_shards(storage: Storage, uri: str, manifest: Manifest, *, full: bool | None = None) -> dict[str, str]:
    """{shard name: why} for each shard of a finished artifact that is missing or not the recorded bytes
    (clipdpo.integrity: sizes always; ETags on S3; sha256 of shards written after the manifest, or of all
    with `full` / CLIPDPO_VERIFY=full)."""
    expected = [
        integrity.Expected(f"{manifest.data_dir}/{shard.name}.parquet", shard.bytes, shard.sha256, shard.etag)
        for shard in manifest.shards
    ]
    problems = integrity.damaged(
        storage, uri.rstrip("/"), expected, recorded_unix=integrity.written_at(storage, join(uri, MANIFEST)), full=full
    )
    return {relative.rsplit("/", 1)[-1].removesuffix(".parquet"): why for relative, why in problems.items()}


@dataclass
class Completion:
    """An output's state for this run: its manifest when it has this fingerprint, and what does not verify."""

    manifest: Manifest | None = None
    damaged: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.manifest is not None and not self.damaged

    def verified(self, name: str) -> bool:
        """The manifest names this shard and its bytes verified: reuse it without reading it again."""
        return (
            self.manifest is not None
            and name not in self.damaged
            and any(shard.name == name for shard in self.manifest.shards)
        )


def _prefix_key(uri: str) -> str:
    """A comparable form of a URI as a folder: S3 as written, local paths resolved."""
    if is_remote(uri):
        return uri.rstrip("/") + "/"
    return os.path.realpath(uri) + "/"


def check_not_inside(output: str, source: str) -> None:
    """Refuse an output that is, lies inside, or contains the source: --overwrite would delete input."""
    if not source or source.startswith("builtin:"):
        return
    out, src = _prefix_key(output), _prefix_key(source)
    if out.startswith(src) or src.startswith(out):
        raise ArtifactError(
            f"--output {output} overlaps the input {source} (one is or lies inside the other); "
            "write the output to a separate prefix"
        )


def check_not_input(output: str, input_uri: str) -> None:
    """Refuse writing an artifact onto its input, or where one's cleanup would delete the other.

    Nesting elsewhere is fine (the training reference cache lives at `<pairs>/refcache/...`):
    cleanup only ever touches an artifact's own `data/`, `_done/` and `export/` folders.
    """
    out, inp = _prefix_key(output), _prefix_key(input_uri)
    if out == inp or any(out.startswith(inp + folder) or inp.startswith(out + folder) for folder in ARTIFACT_FOLDERS):
        raise ArtifactError(
            f"--output {output} is (or lies in the shard folders of) its input {input_uri}; "
            "write the output to a separate prefix"
        )


def _describe_difference(existing: Manifest, config: dict[str, Any], input_uris: list[str]) -> str:
    changed = sorted(key for key in set(existing.config) | set(config) if existing.config.get(key) != config.get(key))
    parts = [f"config keys {changed}"] if changed else []
    if existing.inputs != input_uris:
        parts.append(f"inputs {existing.inputs} -> {input_uris}")
    return ", ".join(parts) or "input contents (same URIs and config, other data)"


class ArtifactWriter:
    """Writes one artifact shard by shard; `finalize` writes the manifest and removes stale files."""

    def __init__(
        self,
        storage: Storage,
        uri: str,
        kind: str,
        config: dict[str, Any],
        inputs: list["Artifact"],
        *,
        overwrite: bool = False,
        input_fingerprints: Sequence[str] = (),
    ):
        check_location(uri, "--output")
        self.storage = storage
        self.uri = uri.rstrip("/")
        self.kind = kind
        self.config = config
        self.input_uris = [artifact.uri for artifact in inputs]
        for artifact in inputs:
            check_not_input(self.uri, artifact.uri)
        upstream = [artifact.manifest.fingerprint for artifact in inputs] + list(input_fingerprints)
        self.fingerprint = fingerprint(kind, config, upstream)
        self.data_dir = f"data/{self.fingerprint[:16]}"
        self.done_dir = f"_done/{self.fingerprint[:16]}"
        self.overwrite = overwrite
        self.lease = Lease(storage, self.uri, self.fingerprint)
        storage.ensure_bucket(self.uri)
        self._refuse_other_complete_artifact()

    def _refuse_other_complete_artifact(self) -> None:
        existing = self._existing_manifest(tolerate_corrupt=self.overwrite)
        if existing is not None and existing.fingerprint != self.fingerprint and not self.overwrite:
            made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(existing.created_unix))
            raise ArtifactError(
                f"{self.uri} already holds a complete {existing.kind!r} artifact ({existing.rows} rows, made {made}) "
                f"that differs in {_describe_difference(existing, self.config, self.input_uris)}; write to a new "
                "--output to keep it, or pass --overwrite to replace it (it stays readable until the new one "
                "is complete, then its files are deleted)"
            )

    def _existing_manifest(self, tolerate_corrupt: bool = False) -> Manifest | None:
        where = join(self.uri, MANIFEST)
        try:
            return Manifest.from_json(self.storage.read_bytes(where).decode(), where)
        except NotFound:
            return None
        except (ArtifactError, UnicodeDecodeError) as err:
            # A torn manifest protects nothing readable: --overwrite replaces it, and a run with our
            # own fingerprint (whose done-records are there) simply finalizes again.
            if tolerate_corrupt or self.storage.list(join(self.uri, self.done_dir)):
                return None
            raise ArtifactError(f"{err}; pass --overwrite to replace it") from err

    def _guard(self) -> None:
        """Before each shard and before the manifest: hold the lease, and the output is still ours."""
        self.lease.check()
        self._refuse_other_complete_artifact()  # a run that finished meanwhile is not overwritten silently

    def completion(self) -> Completion:
        """This fingerprint's manifest (if the output holds it) and its shards that do not verify; when all
        verify, it finishes an interrupted cleanup."""
        manifest = self._existing_manifest(tolerate_corrupt=True)
        if manifest is None or manifest.fingerprint != self.fingerprint:
            return Completion()
        damaged = damaged_shards(self.storage, self.uri, manifest)
        if damaged:
            log.warning(
                "%s: complete, but %d shard(s) do not verify and are redone: %s",
                self.uri,
                len(damaged),
                integrity.describe(damaged),
            )
            return Completion(manifest, damaged)
        try:
            self.lease.check()  # never delete under a run that holds the output now
        except LeaseHeld:
            return Completion(manifest)
        self.remove_stale([shard.name for shard in manifest.shards])
        self.lease.release()
        return Completion(manifest)

    def is_complete(self) -> bool:
        """True when the output holds this fingerprint's manifest and every shard it names verifies."""
        return self.completion().complete

    def keep_verified(self, record: ShardRecord) -> None:
        """A verified shard of the manifest being repaired: restore its done-record if that was lost."""
        if self._record(record.name) is None:
            where = join(self.uri, self.done_dir, f"{record.name}.json")
            self.storage.write_bytes(where, json.dumps(asdict(record), sort_keys=True).encode())

    def shard_uri(self, name: str) -> str:
        return join(self.uri, self.data_dir, f"{name}.parquet")

    def sidecar_uri(self, folder: str, filename: str) -> str:
        """A per-shard extra file (an export) named `<shard>.<ext>` under `export/`, where users glob it.

        Unlike the shards it is rewritten in place: during an `--overwrite` the folder mixes the old
        and the new run's files until the manifest lands; then the files of shards it does not name go.
        """
        if not folder.startswith("export"):
            raise ValueError(f"sidecar folder {folder!r}: sidecars live under export/")
        return join(self.uri, folder, filename)

    def _record(self, name: str) -> ShardRecord | None:
        where = join(self.uri, self.done_dir, f"{name}.json")
        try:
            record = ShardRecord(**json.loads(self.storage.read_bytes(where)))
        except NotFound:
            return None
        except (ValueError, TypeError):
            return None  # a torn or foreign record: redo the shard
        return record if record.fingerprint == self.fingerprint else None

    def done_record(self, name: str) -> ShardRecord | None:
        """The shard's record if a run with the same fingerprint finished it and its bytes are intact."""
        record = self._record(name)
        if record is None:
            return None
        try:
            data = self.storage.read_bytes(self.shard_uri(name))
        except NotFound:
            log.warning("%s: shard %s has a done-record but no data file: redone", self.uri, name)
            return None
        if len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.sha256:
            log.warning("%s: shard %s does not match the sha256 of its done-record: redone", self.uri, name)
            return None
        return record

    def write_shard(self, name: str, table: pa.Table, stats: dict[str, Any] | None = None) -> ShardRecord:
        table = validate_table(table, self.kind, where=f"{self.uri} shard {name}")
        self._guard()
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            pq.write_table(table, tmp.name, compression="zstd")
            size = os.path.getsize(tmp.name)
            digest = self.storage.upload_file(tmp.name, self.shard_uri(name))
        record = ShardRecord(
            name,
            table.num_rows,
            digest,
            size,
            stats or {},
            self.fingerprint,
            integrity.store_etag(self.storage, self.shard_uri(name)),
        )
        # The done-record goes second: a crash between the two leaves the shard to be redone.
        where = join(self.uri, self.done_dir, f"{name}.json")
        self.storage.write_bytes(where, json.dumps(asdict(record), sort_keys=True, allow_nan=False).encode())
        return record

    def _finished_records(self, shard_names: list[str]) -> list[ShardRecord]:
        """Every shard's record; sizes checked (cheap), sha256 is checked by readers and on resume."""
        records: list[ShardRecord] = []
        missing: list[str] = []
        for name in shard_names:
            record = self._record(name)
            try:
                intact = record is not None and self.storage.size(self.shard_uri(name)) == record.bytes
            except NotFound:
                intact = False
            if record is not None and intact:
                records.append(record)
            else:
                missing.append(name)
        if missing:
            raise ArtifactError(
                f"{self.uri}: cannot finalize, {len(missing)} shard(s) not finished: {missing[:10]}"
                + (" ..." if len(missing) > 10 else "")
            )
        return records

    def finalize(
        self,
        shard_names: list[str],
        summarize: Callable[[list[ShardRecord]], dict[str, Any]] | None = None,
    ) -> Manifest:
        """Write the manifest once every shard is done; `summarize` turns the records into its stats."""
        records = self._finished_records(shard_names)
        self._guard()
        manifest = Manifest(
            kind=self.kind,
            fingerprint=self.fingerprint,
            shards=records,
            config=self.config,
            inputs=self.input_uris,
            code_version=code_version(),
            stats=summarize(records) if summarize else {},
            created_unix=time.time(),
            data_dir=self.data_dir,
        )
        self.storage.write_bytes(join(self.uri, MANIFEST), manifest.to_json().encode())
        self.remove_stale(shard_names)
        self.lease.release()
        return manifest

    def remove_stale(self, shard_names: list[str]) -> list[str]:
        """Delete what the manifest does not name: an overwritten run's shards, done-records, exports."""
        keep_segment, names = self.fingerprint[:16], set(shard_names)
        stale = []
        for uri in self.storage.list(self.uri):
            relative = uri[len(self.uri) + 1 :]
            # Only the folders artifacts write are touched: anything else under the prefix is not ours.
            if not relative.startswith(ARTIFACT_FOLDERS):
                continue
            if relative.startswith("export/"):
                if relative.rsplit("/", 1)[-1].split(".", 1)[0] in names:
                    continue
            elif keep_segment in relative.split("/"):
                continue
            self.storage.delete(uri)
            stale.append(relative)
        if stale:
            log.info("%s: removed %d stale object(s) of an earlier run: %s", self.uri, len(stale), stale[:5])
        return stale


class Artifact:
    """A complete artifact opened for reading."""

    def __init__(self, storage: Storage, uri: str, manifest: Manifest):
        self.storage = storage
        self.uri = uri.rstrip("/")
        self.manifest = manifest

    @classmethod
    def open(cls, storage: Storage, uri: str, kind: str | None = None) -> "Artifact":
        if not uri.strip():
            raise ArtifactError(
                f"the artifact location is empty; expected a folder holding {MANIFEST} or an s3://bucket/prefix"
            )
        if not is_remote(uri) and (problem := local_folder_problem(uri)):
            raise ArtifactError(f"{uri}: not an artifact: {problem} (an artifact is a folder holding {MANIFEST})")
        where = join(uri, MANIFEST)
        try:
            text = storage.read_bytes(where).decode()
        except NotFound:
            raise ArtifactError(
                f"{uri}: no {MANIFEST}: the artifact is missing or its stage has not finished"
            ) from None
        manifest = Manifest.from_json(text, where)
        if manifest.schema_version != SCHEMA_VERSION:
            raise ArtifactError(f"{where}: schema_version {manifest.schema_version}, this code reads {SCHEMA_VERSION}")
        if kind is not None and manifest.kind != kind:
            raise ArtifactError(f"{where}: holds a {manifest.kind!r} artifact, expected {kind!r}")
        return cls(storage, uri, manifest)

    @property
    def shard_names(self) -> list[str]:
        return [shard.name for shard in self.manifest.shards]

    def shard_uri(self, name: str) -> str:
        return join(self.uri, self.manifest.data_dir, f"{name}.parquet")

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read one shard, verifying its checksum and schema against the manifest."""
        record = next((shard for shard in self.manifest.shards if shard.name == name), None)
        if record is None:
            raise ArtifactError(f"{self.uri}: no shard {name!r} in the manifest")
        where = self.shard_uri(name)
        data = self.storage.read_bytes(where)
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise ArtifactError(
                f"{where}: sha256 {digest[:12]} does not match the manifest ({record.sha256[:12]}); "
                "rerun the stage that wrote it with --verify full to redo the damaged shards"
            )
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
