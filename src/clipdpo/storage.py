"""Read and write `s3://bucket/key` and local paths through one small interface.

Writes are atomic: a reader never sees a half-written object. Locally that is a
temp file renamed into place; on S3 it is a single PUT, or a multipart upload
that boto3 completes only after every part arrived (and aborts otherwise).
Retries with exponential backoff are botocore's own ("standard" mode); an
unreachable endpoint becomes a `StorageError` that names the endpoint.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from clipdpo.errors import UserError

MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 8 * 1024 * 1024
# S3 error codes that mean "these credentials do not work here" (403: a HEAD request's bare status).
CREDENTIAL_ERRORS = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "InvalidToken",
    "ExpiredToken",
)


class StorageError(RuntimeError, UserError):
    """An object could not be read or written; the message names the URI."""


class NotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


class NotAFile(StorageError, IsADirectoryError):
    """A local path read as an object is a folder (still an IsADirectoryError for callers that probe folders)."""


class BlockedPath(NotFound, NotADirectoryError):
    """A local path cannot exist: a file lies where one of its folders would be (read: so it is not there)."""


class NoAccess(StorageError, PermissionError):
    """The local file system refused access to a path."""


# S3's bucket naming rules (as botocore checks them before sending anything): letters, digits, '.', '-', '_'.
_BUCKET_NAME = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")


def local_folder_problem(path: str) -> str | None:
    """Why local `path` cannot be (or hold) a folder: it is a file, or lies under one; None when it can."""
    if not path:
        return "the path is empty"
    here = os.path.abspath(path)
    if os.path.exists(here) and not os.path.isdir(here):
        return f"{path} is a file, not a folder"
    parent = os.path.dirname(here)
    while parent and not os.path.exists(parent):
        if os.path.dirname(parent) == parent:
            break
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        return f"{path} lies under {parent}, which is a file, not a folder"
    return None


def check_location(uri: str, what: str) -> None:
    """Refuse, in one line naming `what` (a flag), a location no artifact can be at: empty, an s3:// URI with
    an invalid bucket, a local path that is a file or lies under one."""
    if not uri.strip():
        raise StorageError(f"{what} is empty; expected a folder or an s3://bucket/prefix")
    if uri.startswith("s3://"):
        try:
            split_s3(uri)
        except StorageError as err:
            raise StorageError(f"{what} {err}") from None
    elif problem := local_folder_problem(uri):
        raise StorageError(f"{what} {uri}: {problem}; expected a folder or an s3://bucket/prefix")


def _local_error(uri: str, err: OSError, *, writing: bool = False) -> StorageError:
    """The `StorageError` that says, in one line, why a local read or write of `uri` failed."""
    if isinstance(err, FileNotFoundError) and not writing:
        return NotFound(f"{uri}: no such file")
    if isinstance(err, IsADirectoryError):
        return NotAFile(f"{uri}: is a folder, not a file")
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        problem = local_folder_problem(os.path.dirname(uri) if writing else uri) or err.strerror
        if writing:
            return BlockedPath(f"{uri}: cannot be written: {problem}")
        return BlockedPath(f"{uri}: no such file ({problem})")
    if isinstance(err, PermissionError):
        return NoAccess(f"{uri}: permission denied ({'writing' if writing else 'reading'})")
    return StorageError(f"{uri}: cannot be {'written' if writing else 'read'} ({err.strerror or err})")


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and how hard to retry. Read from the standard AWS variables."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_env(cls) -> "S3Settings":
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            max_attempts=int(os.environ.get("CLIPDPO_S3_MAX_ATTEMPTS", "5")),
        )


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object; `version` (S3 ETag, local mtime in ns) changes when its bytes are replaced;
    `modified_unix`: when it was last written (S3 LastModified, whole seconds; local mtime)."""

    uri: str
    size: int
    version: str
    modified_unix: float = 0.0


# Set in the env of the run's own server (clipdpo.s3server): a client that cannot reach that endpoint says the
# server died instead of blaming the endpoint setting.
LOCAL_ENDPOINT_VAR = "CLIPDPO_LOCAL_S3_ENDPOINT"
LOCAL_LOG_VAR = "CLIPDPO_LOCAL_S3_LOG"


def died_message(endpoint_url: str, log_path: str, returncode: int | None = None) -> str:
    """What a client says when the local server clipdpo started stops answering: not "set AWS_ENDPOINT_URL"
    (nothing the user set is wrong), but that the server is gone and where its log is."""
    status = f", exit status {returncode}" if returncode is not None else ""
    return (
        f"the local S3 server at {endpoint_url} that clipdpo started is not answering: it died or was "
        f"stopped{status}; see its log {log_path}; rerun to start a new one (finished steps are kept)"
    )


def local_server_log(endpoint_url: str | None) -> str | None:
    """The log of the loopback S3 server clipdpo started at `endpoint_url` (clipdpo.s3server puts its
    endpoint and log in the env it hands out), None for any other endpoint."""
    if endpoint_url and os.environ.get(LOCAL_ENDPOINT_VAR) == endpoint_url:
        return os.environ.get(LOCAL_LOG_VAR) or None
    return None


def env_credentials() -> dict[str, str]:
    """The AWS_* key pair of the environment as it is now, for one client. boto3's default session keeps the
    first credentials it resolved for the life of the process: after a loopback server's restart (new
    credentials each start) or a second server, it would sign with the old pair. Empty when the pair is not
    set: botocore's own chain then finds them (config file, role, ...)."""
    access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (access_key and secret_key):
        return {}
    pair = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
    if os.environ.get("AWS_SESSION_TOKEN"):
        pair["aws_session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pair


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    if not _BUCKET_NAME.match(parsed.netloc):
        raise StorageError(
            f"{uri}: {parsed.netloc!r} is not a valid S3 bucket name (letters, digits, '.', '-' "
            "and '_' only; new buckets: 3-63 lower-case letters, digits, '.' and '-')"
        )
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/', whatever the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def is_remote(uri: str) -> bool:
    """Whether `uri` names an S3 object or prefix (else a local path)."""
    return uri.startswith("s3://")


def _unix(when) -> float:
    """An S3 LastModified (a datetime) as seconds since the epoch; 0.0 when absent."""
    return when.timestamp() if when is not None else 0.0


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(READ_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Storage:
    """One client for both schemes; create once per process and reuse."""

    def __init__(self, s3: S3Settings | None = None):
        self._s3_settings = s3 or S3Settings.from_env()
        self._client = None

    # -- S3 plumbing -------------------------------------------------------
    @property
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            settings = self._s3_settings
            self._client = boto3.client(
                "s3",
                endpoint_url=settings.endpoint_url,
                region_name=settings.region,
                **env_credentials(),
                config=Config(
                    signature_version="s3v4",
                    retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                    connect_timeout=settings.connect_timeout_s,
                    read_timeout=settings.read_timeout_s,
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    def _s3_call(self, uri: str, fn, **kwargs):
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            NoCredentialsError,
            ParamValidationError,
            ResponseStreamingError,
        )

        try:
            return fn(**kwargs)
        except ParamValidationError as err:  # refused before sending: a bucket name or key S3 cannot take
            raise StorageError(f"{uri}: not a valid S3 location ({' '.join(str(err).split())})") from err
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{uri}: no such object") from err
            if code == "NoSuchBucket":
                raise NotFound(f"{uri}: bucket does not exist (create it, or check the bucket name)") from err
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise PreconditionFailed(f"{uri}: changed by another writer") from err
            if code in CREDENTIAL_ERRORS:
                endpoint = self._s3_settings.endpoint_url or "AWS"
                raise StorageError(
                    f"{uri}: S3 at {endpoint} refused the request ({code}): check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or the role) and that they may access this bucket"
                ) from err
            raise StorageError(f"{uri}: S3 error {code}: {err}") from err
        except NoCredentialsError as err:
            raise StorageError(f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from err
        except ResponseStreamingError as err:  # the connection broke while the body streamed: a read error
            raise StorageError(f"{uri}: the read broke off ({err}); rerun to retry") from err
        except (EndpointConnectionError, ConnectionClosedError) as err:
            endpoint = self._s3_settings.endpoint_url or "AWS default endpoint"
            log_path = local_server_log(endpoint)
            if log_path:  # clipdpo's own server: the endpoint is right, the server is gone
                raise StorageError(f"{uri}: {died_message(endpoint, log_path)}") from err
            raise StorageError(
                f"{uri}: cannot reach S3 at {endpoint} after {self._s3_settings.max_attempts} attempts "
                f"(set AWS_ENDPOINT_URL to the right server): {err}"
            ) from err

    # -- reads ---------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            return self._s3_call(uri, lambda: self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        try:
            return Path(uri).read_bytes()
        except OSError as err:
            raise _local_error(uri, err) from err

    def iter_chunks(self, uri: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """Stream an object without holding it whole in memory."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            body = self._s3_call(uri, self.s3.get_object, Bucket=bucket, Key=key)["Body"]
            yield from body.iter_chunks(chunk_bytes)
            return
        try:
            with open(uri, "rb") as handle:
                while chunk := handle.read(chunk_bytes):
                    yield chunk
        except OSError as err:
            raise _local_error(uri, err) from err

    def download_file(self, uri: str, local_path: str) -> None:
        """Stream an object to a local file, renamed into place only when complete."""
        path = Path(local_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as handle:
                for chunk in self.iter_chunks(uri):
                    handle.write(chunk)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def exists(self, uri: str) -> bool:
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            try:
                self._s3_call(uri, self.s3.head_object, Bucket=bucket, Key=key)
                return True
            except NotFound:
                return False
        return Path(uri).is_file()

    def size(self, uri: str) -> int:
        """Bytes of one object; `NotFound` when it is missing."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            return int(self._s3_call(uri, self.s3.head_object, Bucket=bucket, Key=key)["ContentLength"])
        try:
            return os.path.getsize(uri)
        except OSError as err:
            raise _local_error(uri, err) from err

    def list(self, prefix: str) -> list[str]:
        """Full URIs of the objects under `prefix` (a folder), sorted."""
        return [info.uri for info in self.list_info(prefix)]

    def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:  # `list` here is the method above
        """The objects under `prefix` (a folder) with size and version, sorted by URI."""
        if prefix.startswith("s3://"):
            bucket, key = split_s3(prefix)
            key = key.rstrip("/") + "/" if key else ""
            paginator = self.s3.get_paginator("list_objects_v2")
            out: builtins.list[ObjectInfo] = []
            pages = self._s3_call(prefix, lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)))
            for page in pages:
                out.extend(
                    ObjectInfo(
                        f"s3://{bucket}/{obj['Key']}",
                        int(obj["Size"]),
                        obj.get("ETag", "").strip('"'),
                        _unix(obj.get("LastModified")),
                    )
                    for obj in page.get("Contents", [])
                )
            return sorted(out, key=lambda info: info.uri)
        root = Path(prefix)
        if not root.is_dir():
            return []
        out = []
        for path in root.rglob("*"):
            if path.is_file() and ".tmp-" not in path.name:
                stat = path.stat()
                out.append(ObjectInfo(str(path), stat.st_size, str(stat.st_mtime_ns), stat.st_mtime_ns / 1e9))
        return sorted(out, key=lambda info: info.uri)

    def content_digest(self, path: str) -> str:
        """A sha256 that changes when anything under `path` (a folder or one object) changes: each object's relative
        name with its S3 ETag and size, or each local file's own sha256; a path that is neither (a model hub id,
        or nothing there) hashes its name."""
        digest = hashlib.sha256()
        if is_remote(path):
            prefix = path.rstrip("/") + "/"
            listed = [(info.uri[len(prefix) :], info.version, info.size) for info in self.list_info(path)]
            if not listed and self.exists(path):  # one object, not a folder
                info = self.info(path)
                listed = [("", info.version, info.size)]
            for relative, version, size in listed:
                digest.update(f"{relative}\0{version}\0{size}\n".encode())
        elif Path(path).is_dir():
            for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
        elif Path(path).is_file():
            digest.update(f"\0{sha256_file(path)}\n".encode())
        else:
            digest.update(f"hub:{path}".encode())
        return digest.hexdigest()

    def info(self, uri: str) -> ObjectInfo:
        """Size, version and time of one object (as `list_info` gives them); `NotFound` when it is missing."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            head = self._s3_call(uri, self.s3.head_object, Bucket=bucket, Key=key)
            return ObjectInfo(
                uri, int(head["ContentLength"]), head.get("ETag", "").strip('"'), _unix(head.get("LastModified"))
            )
        try:
            stat = os.stat(uri)
        except FileNotFoundError as err:
            raise NotFound(f"{uri}: no such file") from err
        return ObjectInfo(uri, stat.st_size, str(stat.st_mtime_ns), stat.st_mtime_ns / 1e9)

    # -- writes ----------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> str:
        """Write atomically; return the sha256 of what was written."""
        digest = sha256_bytes(data)
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            self._s3_call(uri, self.s3.put_object, Bucket=bucket, Key=key, Body=data)
            return digest
        path = Path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        except OSError as err:
            raise _local_error(uri, err, writing=True) from err
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return digest

    def upload_file(self, local_path: str, uri: str) -> str:
        """Upload a finished local file; large files go multipart, completed only when whole."""
        digest = hashlib.sha256()
        with open(local_path, "rb") as handle:
            for chunk in iter(lambda: handle.read(READ_CHUNK_BYTES), b""):
                digest.update(chunk)
        if uri.startswith("s3://"):
            from boto3.s3.transfer import TransferConfig

            bucket, key = split_s3(uri)
            config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD_BYTES)
            # boto3 aborts the multipart upload if any part fails: no partial object appears.
            self._s3_call(uri, self.s3.upload_file, Filename=local_path, Bucket=bucket, Key=key, Config=config)
        else:
            path = Path(uri)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise _local_error(uri, err, writing=True) from err
            tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, path)
        return digest.hexdigest()

    # -- conditional writes (leases) --------------------------------------------
    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """The object's bytes and a version tag for `write_if` (S3 ETag; locally the sha256)."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            response = self._s3_call(uri, self.s3.get_object, Bucket=bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        data = self.read_bytes(uri)
        return data, sha256_bytes(data)

    def write_if(self, uri: str, data: bytes, version: str | None) -> str:
        """Write only if the object is absent (`version=None`) or still at `version`; return the new version.

        S3: a conditional PUT (If-None-Match: * / If-Match), atomic on stores that support it (AWS,
        SeaweedFS, MinIO). Local: absent-only is atomic (hard link of a finished temp file); a replace
        checks the version and writes under an exclusive lock on a sidecar `.<name>.tmp-lock` file.
        """
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
            return self._s3_call(uri, self.s3.put_object, Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        path = Path(uri)
        if version is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
            except OSError as err:
                raise _local_error(uri, err, writing=True) from err
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, path)
            except FileExistsError as err:
                raise PreconditionFailed(f"{uri}: changed by another writer") from err
            finally:
                os.unlink(tmp)
            return sha256_bytes(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        # check and replace under an exclusive lock on a sidecar file: writers through write_if never interleave
        with open(path.parent / f".{path.name}.tmp-lock", "a") as lock:  # ".tmp-": listings skip it
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = sha256_bytes(self.read_bytes(uri))
            except NotFound:
                current = None
            if current != version:
                raise PreconditionFailed(f"{uri}: changed by another writer")
            return self.write_bytes(uri, data)

    def delete_if(self, uri: str, version: str) -> None:
        """Delete only if the object is still at `version`; a lost race is not an error."""
        try:
            if uri.startswith("s3://"):
                bucket, key = split_s3(uri)
                self._s3_call(uri, self.s3.delete_object, Bucket=bucket, Key=key, IfMatch=version)
            elif self.read_versioned(uri)[1] == version:
                self.delete(uri)
        except (PreconditionFailed, NotFound):
            pass

    def delete(self, uri: str) -> None:
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            self._s3_call(uri, self.s3.delete_object, Bucket=bucket, Key=key)
        else:
            try:
                os.unlink(uri)
            except FileNotFoundError:
                pass  # deleting what is gone is done (S3 behaves the same)

    def ensure_bucket(self, uri: str) -> None:
        """Create the bucket of an s3:// URI if missing (local runs and tests)."""
        if not uri.startswith("s3://"):
            return
        bucket, _ = split_s3(uri)
        try:
            self._s3_call(uri, self.s3.head_bucket, Bucket=bucket)
        except NotFound:
            self._s3_call(uri, self.s3.create_bucket, Bucket=bucket)


def local_model_dir(storage: Storage, model: str, cache_dir: str) -> str:
    """`model` itself unless it is an s3:// prefix, which is copied (once per content) under `cache_dir`.

    The copy is keyed by the prefix and what it holds (storage.content_digest: one listing), not by the prefix
    alone: a model retrained where it was (a rerun's round, which the next round trains and captions from) gets a
    copy of its own instead of the old one's."""
    if not model.startswith("s3://"):
        return model
    key = f"{model}\0{storage.content_digest(model)}"
    target = Path(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:16])
    marker = target / ".complete"
    if not marker.exists():
        prefix = model.rstrip("/")
        uris = storage.list(prefix)
        if not uris:
            raise FileNotFoundError(f"model {model}: no files under that prefix")
        for uri in uris:
            storage.download_file(uri, str(target / uri[len(prefix) + 1 :]))
        marker.write_text(model)
    return str(target)


def upload_tree(storage: Storage, local_dir: str, uri: str) -> list[str]:
    """Upload every file under `local_dir` to `uri`/<relative path>; the URIs written."""
    uploaded = []
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            target = join(uri, str(path.relative_to(local_dir)))
            storage.upload_file(str(path), target)
            uploaded.append(target)
    return uploaded
