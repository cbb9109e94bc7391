"""A finished output with a damaged file is not complete: a stage, and the local runner's check of kfp's
cache, verify each file against the record that names it and redo exactly the damaged ones.

Against the real loopback S3 server (ETags in a listing) and local folders (sizes; sha256 of a file
rewritten after its manifest; every sha256 with CLIPDPO_VERIFY=full)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from clipdpo import integrity, outputref
from clipdpo.artifacts import Artifact, ArtifactWriter, damaged_shards, shard_name
from clipdpo.schemas import IMAGES
from clipdpo.stage import ShardSpec, run_shards
from clipdpo.storage import Storage, join

NAMES = [shard_name(k) for k in range(3)]


def _table(name: str) -> pa.Table:
    k = int(name[-1])
    return pa.Table.from_pylist(
        [
            dict(image_id=f"i{k}{j}", source="t", uri=f"u{k}{j}", image=bytes([k, j]) * 50, width=1, height=1)
            for j in range(4)
        ],
        schema=IMAGES,
    )


def _run(storage: Storage, uri: str, calls: list[str] | None = None):
    calls = [] if calls is None else calls
    writer = ArtifactWriter(storage, uri, "images", {"n": 3}, [])
    return run_shards(writer, NAMES, lambda name: calls.append(name) or (_table(name), {"rows": 4}), ShardSpec())


@pytest.fixture(params=["s3", "local"])
def finished(request, bucket, tmp_path) -> str:
    uri = f"{bucket}/images" if request.param == "s3" else str(tmp_path / "images")
    _run(Storage(), uri)
    return uri


def _same_size_other_bytes(storage: Storage, uri: str) -> None:
    data = bytearray(storage.read_bytes(uri))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(uri, bytes(data))


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_a_damaged_shard_of_a_finished_artifact_is_redone_and_only_it(finished, damage):
    """Before: the stage saw the manifest and said "already complete"; the shard stayed missing or corrupt."""
    storage = Storage()
    target = Artifact.open(storage, finished).shard_uri(NAMES[1])
    if damage == "delete":
        storage.delete(target)
    elif damage == "truncate":
        storage.write_bytes(target, storage.read_bytes(target)[:100])
    else:
        _same_size_other_bytes(storage, target)  # S3: another ETag; locally: written after the manifest
    damaged = damaged_shards(storage, finished, Artifact.open(storage, finished).manifest)
    assert list(damaged) == [NAMES[1]]
    if damage == "flip":  # found by the store's checksum on S3 (no read), by a read of the rewritten file locally
        assert ("ETag" if finished.startswith("s3://") else "sha256") in damaged[NAMES[1]]
    calls: list[str] = []
    result = _run(storage, finished, calls)
    assert calls == [NAMES[1]] and result.skipped == [NAMES[0], NAMES[2]]
    artifact = Artifact.open(storage, finished)
    assert [artifact.read_shard(name).num_rows for name in NAMES] == [4, 4, 4]  # every sha256 holds again
    assert damaged_shards(storage, finished, artifact.manifest) == {}
    calls.clear()
    assert _run(storage, finished, calls).processed == [] and calls == []  # and then it is complete


def test_a_deleted_manifest_reuses_every_intact_shard(finished):
    storage = Storage()
    before = Artifact.open(storage, finished).manifest
    storage.delete(join(finished, "manifest.json"))
    calls: list[str] = []
    result = _run(storage, finished, calls)
    assert calls == [] and result.skipped == NAMES  # each shard's sha256 checked against its done-record
    assert [s.sha256 for s in result.manifest.shards] == [s.sha256 for s in before.shards]


def test_a_byte_flipped_in_place_with_its_time_kept_needs_the_full_check(tmp_path, monkeypatch):
    """Locally the store gives no checksum: a rewrite that keeps the file's time is found by --verify full."""
    storage = Storage()
    uri = str(tmp_path / "images")
    _run(storage, uri)
    target = Artifact.open(storage, uri).shard_uri(NAMES[2])
    stat = os.stat(target)
    _same_size_other_bytes(storage, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    calls: list[str] = []
    assert _run(storage, uri, calls).processed == [] and calls == []  # cheap: sizes and times agree
    monkeypatch.setenv(integrity.VERIFY_ENV, "full")
    assert _run(storage, uri, calls).processed == [NAMES[2]] and calls == [NAMES[2]]
    Artifact.open(storage, uri).read_shard(NAMES[2])


def test_the_verify_flag_reaches_the_check_and_a_bad_mode_is_one_line(tmp_path, capsys, monkeypatch):
    from clipdpo.filter.__main__ import main

    monkeypatch.delenv(integrity.VERIFY_ENV, raising=False)
    monkeypatch.setenv(integrity.VERIFY_ENV, "paranoid")
    with pytest.raises(Exception, match="CLIPDPO_VERIFY='paranoid'"):
        integrity.verify_mode()
    monkeypatch.delenv(integrity.VERIFY_ENV)
    with pytest.raises(SystemExit):
        main(["--input", "x", "--output", str(tmp_path / "o"), "--verify", "paranoid"])
    assert "invalid choice: 'paranoid'" in capsys.readouterr().err
    assert integrity.verify_mode() == "cheap"


def test_prune_drops_the_cache_entry_of_a_complete_artifact_with_a_damaged_shard(finished, tmp_path):
    """Before: kfp's cache held the step (manifest fingerprint unchanged) and every later step failed on read."""
    from pipelines.local_cache import CACHE_FOLDER, prune

    storage = Storage()
    folder = tmp_path / "kfp" / CACHE_FOLDER
    folder.mkdir(parents=True)
    reference = outputref.ref(storage, finished)
    (folder / "ingest.json").write_text(json.dumps({"Output": reference}))
    assert prune(str(tmp_path / "kfp"), storage) == (1, [])  # intact: kept
    storage.delete(Artifact.open(storage, finished).shard_uri(NAMES[0]))
    assert prune(str(tmp_path / "kfp"), storage) == (1, [reference])
    assert os.listdir(folder) == []


def test_prune_checks_a_training_runs_model_files(bucket, tmp_path):
    from pipelines.local_cache import CACHE_FOLDER, prune

    storage = Storage()
    model = join(bucket, "run", "model")
    weights = join(model, "model", "weights.bin")
    digest = storage.write_bytes(weights, b"w" * 64)
    summary = {
        "fingerprint": "cd" * 32,
        "files": {"model/weights.bin": {"bytes": 64, "sha256": digest, "etag": integrity.store_etag(storage, weights)}},
    }
    storage.write_bytes(join(model, integrity.TRAIN_SUMMARY), json.dumps(summary).encode())
    folder = tmp_path / "kfp" / CACHE_FOLDER
    folder.mkdir(parents=True)
    reference = outputref.ref(storage, model)
    (folder / "train.json").write_text(json.dumps({"Output": reference}))
    assert prune(str(tmp_path / "kfp"), storage) == (1, [])
    storage.write_bytes(weights, b"v" * 64)  # same size, other bytes: another ETag
    assert prune(str(tmp_path / "kfp"), storage) == (1, [reference])


def test_a_multipart_shard_verifies_by_its_listed_etag(bucket, monkeypatch):
    """A shard uploaded in parts has a multipart ETag; the listing gives the same one as the upload's HEAD."""
    import clipdpo.storage as storage_module

    monkeypatch.setattr(storage_module, "MULTIPART_THRESHOLD_BYTES", 5 * 1024 * 1024)
    storage = Storage()
    uri = f"{bucket}/big"
    big = pa.Table.from_pylist(
        [dict(image_id="i", source="t", uri="u", image=os.urandom(11 * 1024 * 1024), width=1, height=1)], schema=IMAGES
    )
    writer = ArtifactWriter(storage, uri, "images", {}, [])
    record = writer.write_shard(NAMES[0], big)
    assert "-" in record.etag  # a multipart ETag: not an MD5 of the bytes, still the store's own checksum
    manifest = writer.finalize([NAMES[0]])
    assert damaged_shards(storage, uri, manifest) == {}
    assert ArtifactWriter(storage, uri, "images", {}, []).is_complete()
