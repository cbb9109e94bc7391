"""Read and write `s3://bucket/key` and local paths through one small interface.

Writes are atomic: a reader never sees a half-written object. Locally that is a
temp file renamed into place; on S3 it is a single PUT, or a multipart upload
that boto3 completes only after every part arrived (and aborts otherwise).
Retries with exponential backoff are botocore's own ("standard" mode); an
unreachable endpoint becomes a `StorageError` that names the endpoint.
"""

from __future__ import annotations

import hashlib
import os
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
CREDENTIAL_ERRORS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                     "ExpiredToken")


class StorageError(RuntimeError, UserError):
    """An object could not be read or written; the message names the URI."""


class NotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


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


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/', whatever the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _unix(when) -> float:
    """An S3 LastModified (a datetime) as seconds since the epoch; 0.0 when absent."""
    return when.timestamp() if when is not None else 0.0


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, NoCredentialsError

        try:
            return fn(**kwargs)
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
        except (EndpointConnectionError, ConnectionClosedError) as err:
            endpoint = self._s3_settings.endpoint_url or "AWS default endpoint"
            raise StorageError(
                f"{uri}: cannot reach S3 at {endpoint} after {self._s3_settings.max_attempts} attempts "
                f"(set AWS_ENDPOINT_URL to the right server): {err}"
            ) from err

    # -- reads ---------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            response = self._s3_call(uri, self.s3.get_object, Bucket=bucket, Key=key)
            return response["Body"].read()
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as err:
            raise NotFound(f"{uri}: no such file") from err

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
        except FileNotFoundError as err:
            raise NotFound(f"{uri}: no such file") from err

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
        except FileNotFoundError as err:
            raise NotFound(f"{uri}: no such file") from err

    def list(self, prefix: str) -> list[str]:
        """Full URIs of the objects under `prefix` (a folder), sorted."""
        return [info.uri for info in self.list_info(prefix)]

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        """The objects under `prefix` (a folder) with size and version, sorted by URI."""
        if prefix.startswith("s3://"):
            bucket, key = split_s3(prefix)
            key = key.rstrip("/") + "/" if key else ""
            paginator = self.s3.get_paginator("list_objects_v2")
            out: list[ObjectInfo] = []
            pages = self._s3_call(prefix, lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)))
            for page in pages:
                out.extend(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj.get("ETag", "").strip('"'),
                                      _unix(obj.get("LastModified")))
                           for obj in page.get("Contents", []))
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

    def info(self, uri: str) -> ObjectInfo:
        """Size, version and time of one object (as `list_info` gives them); `NotFound` when it is missing."""
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            head = self._s3_call(uri, self.s3.head_object, Bucket=bucket, Key=key)
            return ObjectInfo(uri, int(head["ContentLength"]), head.get("ETag", "").strip('"'),
                              _unix(head.get("LastModified")))
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
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
            path.parent.mkdir(parents=True, exist_ok=True)
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
        SeaweedFS, MinIO). Local: absent-only is atomic (hard link of a finished temp file); the
        version check before a replace leaves a small window, which the lease's read-back covers.
        """
        if uri.startswith("s3://"):
            bucket, key = split_s3(uri)
            condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
            return self._s3_call(uri, self.s3.put_object, Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        path = Path(uri)
        if version is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, path)
            except FileExistsError as err:
                raise PreconditionFailed(f"{uri}: changed by another writer") from err
            finally:
                os.unlink(tmp)
            return sha256_bytes(data)
        try:
            current = sha256_bytes(path.read_bytes())
        except FileNotFoundError:
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
    """`model` itself unless it is an s3:// prefix, which is copied (once) under `cache_dir`."""
    if not model.startswith("s3://"):
        return model
    target = Path(cache_dir, hashlib.sha256(model.encode()).hexdigest()[:16])
    marker = target / ".complete"
    if not marker.exists():
        prefix = model.rstrip("/")
        uris = storage.list(prefix)
        if not uris:
            raise FileNotFoundError(f"model {model}: no files under that prefix")
        for uri in uris:
            storage.download_file(uri, str(target / uri[len(prefix) + 1:]))
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
