"""Storage and artifacts against the real loopback S3 server: atomicity, checksums, resume."""

import json
import os

import pyarrow as pa
import pytest

from clipdpo.artifacts import Artifact, ArtifactError, ArtifactWriter, shard_name
from clipdpo.schemas import IMAGES, SchemaError
from clipdpo.stage import ShardSpec, run_shards
from clipdpo.storage import NotFound, S3Settings, Storage, StorageError


def _images(n, start=0):
    return pa.Table.from_pylist(
        [dict(image_id=f"i{start + k}", source="t", uri=f"u{k}", image=b"x", width=1, height=1) for k in range(n)],
        schema=IMAGES,
    )


@pytest.mark.parametrize("scheme", ["s3", "local"])
def test_roundtrip_list_and_missing(scheme, bucket, tmp_path):
    base = f"{bucket}/rt" if scheme == "s3" else str(tmp_path / "rt")
    storage = Storage()
    digest = storage.write_bytes(f"{base}/a/one.bin", b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256("hello")
    storage.write_bytes(f"{base}/a/two.bin", b"world")
    assert storage.read_bytes(f"{base}/a/one.bin") == b"hello"
    assert b"".join(storage.iter_chunks(f"{base}/a/two.bin", chunk_bytes=2)) == b"world"
    assert storage.list(f"{base}/a") == [f"{base}/a/one.bin", f"{base}/a/two.bin"]
    assert storage.exists(f"{base}/a/one.bin") and not storage.exists(f"{base}/a/nope")
    with pytest.raises(NotFound, match="nope"):
        storage.read_bytes(f"{base}/a/nope")


def test_multipart_upload_is_whole(bucket, tmp_path, monkeypatch):
    import clipdpo.storage as storage_module

    monkeypatch.setattr(storage_module, "MULTIPART_THRESHOLD_BYTES", 5 * 1024 * 1024)
    payload = os.urandom(12 * 1024 * 1024)  # three parts
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    storage = Storage()
    digest = storage.upload_file(str(path), f"{bucket}/big.bin")
    assert storage.read_bytes(f"{bucket}/big.bin") == payload
    import hashlib

    assert digest == hashlib.sha256(payload).hexdigest()


def test_unreachable_s3_names_the_endpoint():
    storage = Storage(S3Settings(endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout_s=0.5))
    with pytest.raises(StorageError, match=r"s3://b/k: cannot reach S3 at http://127.0.0.1:9"):
        storage.read_bytes("s3://b/k")


def test_reader_refuses_incomplete_artifact_and_finalize_needs_all_shards(bucket):
    storage = Storage()
    uri = f"{bucket}/images"
    writer = ArtifactWriter(storage, uri, "images", {"a": 1}, [])
    writer.write_shard(shard_name(0), _images(3))
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Artifact.open(storage, uri)
    with pytest.raises(ArtifactError, match=r"1 shard\(s\) not finished: \['part-00001'\]"):
        writer.finalize([shard_name(0), shard_name(1)])
    writer.write_shard(shard_name(1), _images(2, start=3))
    manifest = writer.finalize([shard_name(0), shard_name(1)])
    assert manifest.rows == 5
    body = json.loads(storage.read_bytes(f"{uri}/manifest.json"))
    assert body["counts"] == {"rows": 5, "shards": 2}
    assert body["schema_version"] == 1 and body["config"] == {"a": 1} and body["code_version"]
    assert all(len(shard["sha256"]) == 64 for shard in body["shards"])
    artifact = Artifact.open(storage, uri, kind="images")
    assert artifact.read_shard("part-00001").column("image_id").to_pylist() == ["i3", "i4"]
    with pytest.raises(ArtifactError, match="holds a 'images' artifact, expected 'scores'"):
        Artifact.open(storage, uri, kind="scores")


def test_corrupt_shard_and_wrong_schema_are_named(bucket):
    storage = Storage()
    uri = f"{bucket}/images"
    writer = ArtifactWriter(storage, uri, "images", {}, [])
    writer.write_shard("part-00000", _images(2))
    writer.finalize(["part-00000"])
    storage.write_bytes(writer.shard_uri("part-00000"), b"not parquet at all")
    with pytest.raises(ArtifactError, match=r"part-00000.parquet: sha256 .* does not match"):
        Artifact.open(storage, uri).read_shard("part-00000")
    bad = pa.table({"image_id": ["a"], "source": ["s"]})
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['uri', 'image', 'width', 'height'\]"):
        writer.write_shard("part-00001", bad)
    wrong_type = _images(1).set_column(4, "width", pa.array(["wide"]))
    with pytest.raises(SchemaError, match="column 'width' has type string, expected int32"):
        writer.write_shard("part-00001", wrong_type)


def test_output_made_from_other_config_is_not_overwritten_silently(bucket):
    storage = Storage()
    uri = f"{bucket}/images"
    first = ArtifactWriter(storage, uri, "images", {"v": 1}, [])
    first.write_shard("part-00000", _images(1))
    first.finalize(["part-00000"])
    with pytest.raises(ArtifactError, match=r"differs in config keys \['v'\]; write to a new --output to keep it"):
        ArtifactWriter(storage, uri, "images", {"v": 2}, [])
    second = ArtifactWriter(storage, uri, "images", {"v": 2}, [], overwrite=True)
    assert not second.is_complete()
    assert second.done_record("part-00000") is None  # old shards are redone, not reused
    # Until the new manifest lands, the old artifact stays whole and readable.
    second.write_shard("part-00000", _images(2, start=10))
    assert Artifact.open(storage, uri).read_shard("part-00000").column("image_id").to_pylist() == ["i0"]
    second.write_shard("part-00001", _images(1, start=20))
    second.finalize(["part-00000", "part-00001"])
    # Item 10: nothing of the first run is left under the prefix for a globbing reader to find.
    listed = [u[len(uri) + 1 :] for u in storage.list(uri)]
    assert sorted(listed) == sorted(
        [
            "manifest.json",
            *[
                f"{d}/{second.fingerprint[:16]}/part-0000{i}.{ext}"
                for d, ext in (("data", "parquet"), ("_done", "json"))
                for i in (0, 1)
            ],
        ]
    )
    assert Artifact.open(storage, uri).read_shard("part-00000").column("image_id").to_pylist() == ["i10", "i11"]


def test_torn_manifest_counts_as_absent_for_overwrite_and_corrupt_shards_are_redone(bucket):
    storage = Storage()
    uri = f"{bucket}/images"
    names = [shard_name(0), shard_name(1)]
    writer = ArtifactWriter(storage, uri, "images", {}, [])
    for k, name in enumerate(names):
        writer.write_shard(name, _images(1, start=k))
    # A shard damaged after its done-record was written, and one deleted: both are redone on resume.
    storage.write_bytes(writer.shard_uri(names[0]), b"PAR1 damaged")
    storage.delete(writer.shard_uri(names[1]))
    calls = []
    result = run_shards(
        ArtifactWriter(storage, uri, "images", {}, []),
        names,
        lambda n: calls.append(n) or (_images(1, start=int(n[-1])), {}),
        ShardSpec(),
    )
    assert calls == names and result.manifest.rows == 2
    Artifact.open(storage, uri).read_shard(names[0])  # checksum holds again
    storage.write_bytes(f"{uri}/manifest.json", b'{"kind": "ima')  # truncated
    # Another config may not take a torn artifact over silently, but --overwrite may.
    with pytest.raises(ArtifactError, match="not a valid clipdpo manifest.*pass --overwrite"):
        ArtifactWriter(storage, uri, "images", {"other": 1}, [])
    # The same config (its done-records are there) just finalizes again.
    assert ArtifactWriter(storage, uri, "images", {}, []).finalize(names).rows == 2
    storage.write_bytes(f"{uri}/manifest.json", b'{"kind": "ima')
    again = ArtifactWriter(storage, uri, "images", {"other": 1}, [], overwrite=True)
    for k, name in enumerate(names):
        again.write_shard(name, _images(1, start=k))
    assert again.finalize(names).rows == 2


def test_run_shards_resumes_and_rerun_is_noop(bucket):
    storage = Storage()
    uri = f"{bucket}/images"
    names = [shard_name(i) for i in range(4)]
    calls = []

    def process(name):
        calls.append(name)
        if name == "part-00002" and len(calls) == 3 and not getattr(process, "crashed", False):
            process.crashed = True
            raise KeyboardInterrupt("killed")  # like a pod killed mid-stage
        return _images(1, start=int(name[-1])), {"images": 1}

    writer = ArtifactWriter(storage, uri, "images", {}, [])
    with pytest.raises(KeyboardInterrupt):
        run_shards(writer, names, process, ShardSpec())
    assert calls == ["part-00000", "part-00001", "part-00002"]
    calls.clear()
    result = run_shards(ArtifactWriter(storage, uri, "images", {}, []), names, process, ShardSpec())
    assert calls == ["part-00002", "part-00003"]  # finished shards were not redone
    assert result.skipped == ["part-00000", "part-00001"]
    assert result.manifest.rows == 4 and result.manifest.stats["images"] == 4
    calls.clear()
    again = run_shards(ArtifactWriter(storage, uri, "images", {}, []), names, process, ShardSpec())
    assert calls == [] and again.processed == []


def test_fan_out_workers_then_finalize(bucket):
    storage = Storage()
    uri = f"{bucket}/images"
    names = [shard_name(i) for i in range(5)]
    seen = {0: [], 1: []}
    for worker in (0, 1):

        def process(name, worker=worker):
            seen[worker].append(name)
            return _images(1, start=int(name[-1])), {}

        result = run_shards(ArtifactWriter(storage, uri, "images", {}, []), names, process, ShardSpec(worker, 2))
        assert result.manifest is None  # workers never write the manifest
    assert seen == {0: ["part-00000", "part-00002", "part-00004"], 1: ["part-00001", "part-00003"]}
    final = run_shards(
        ArtifactWriter(storage, uri, "images", {}, []), names, lambda n: 1 / 0, ShardSpec(), finalize_only=True
    )
    assert final.manifest.rows == 5


def test_shard_spec_parsing():
    import argparse

    assert ShardSpec.parse("2/4") == ShardSpec(2, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError):
            ShardSpec.parse(bad)


def test_overwrite_with_fewer_shards_leaves_no_stale_export_or_foreign_files(tmp_path):
    storage = Storage()
    uri = str(tmp_path / "pairs")
    storage.write_bytes(f"{uri}/notes/mine.txt", b"not the artifact's")  # never touched
    old = ArtifactWriter(storage, uri, "images", {"v": 1}, [])
    for k, name in enumerate([shard_name(0), shard_name(1)]):
        storage.write_bytes(old.sidecar_uri("export/trl", f"{name}.parquet"), b"old")
        old.write_shard(name, _images(1, start=k))
    old.finalize([shard_name(0), shard_name(1)])
    new = ArtifactWriter(storage, uri, "images", {"v": 2}, [], overwrite=True)
    storage.write_bytes(new.sidecar_uri("export/trl", "part-00000.parquet"), b"new")
    new.write_shard(shard_name(0), _images(1))
    new.finalize([shard_name(0)])
    listed = sorted(u[len(uri) + 1 :] for u in storage.list(uri))
    fp = new.fingerprint[:16]
    assert listed == [
        "_done/" + fp + "/part-00000.json",
        "data/" + fp + "/part-00000.parquet",
        "export/trl/part-00000.parquet",
        "manifest.json",
        "notes/mine.txt",
    ]
    assert storage.read_bytes(f"{uri}/export/trl/part-00000.parquet") == b"new"


def test_a_read_that_breaks_off_mid_body_is_one_storage_error():
    """A connection lost while an object's body streams is a StorageError naming the object (one line, exit 2
    at the command line), not a botocore traceback."""
    from botocore.exceptions import ResponseStreamingError

    from clipdpo.storage import StorageError

    class Body:
        def read(self):
            raise ResponseStreamingError(error="connection reset")

    class Client:
        def get_object(self, **kwargs):
            return {"Body": Body()}

    storage = Storage()
    storage._client = Client()
    with pytest.raises(StorageError, match="s3://b/k: the read broke off"):
        storage.read_bytes("s3://b/k")
