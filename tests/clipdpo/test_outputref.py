"""Versioned step outputs (clipdpo.outputref) and the local runner's check of kfp's cache,
against the real loopback S3 server and kfp's own cache files."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa

from clipdpo import outputref
from clipdpo.artifacts import ArtifactWriter, shard_name
from clipdpo.schemas import IMAGES
from clipdpo.stage import ShardSpec, run_shards
from clipdpo.storage import Storage, join


def write_images(storage: Storage, uri: str, config: dict, rows: int = 3) -> str:
    """A complete images artifact made with `config`; its manifest's fingerprint."""
    table = pa.Table.from_pylist(
        [dict(image_id=f"i{k}", source="t", uri=f"u{k}", image=b"x", width=1, height=1) for k in range(rows)],
        schema=IMAGES,
    )
    writer = ArtifactWriter(storage, uri, "images", config, [], overwrite=True)
    return run_shards(writer, [shard_name(0)], lambda name: (table, {}), ShardSpec()).manifest.fingerprint


def test_a_reference_carries_what_its_artifact_holds_and_holds_while_that_stays(bucket):
    storage = Storage()
    uri = join(bucket, "run", "images")
    assert outputref.ref(storage, uri) == uri and not outputref.trusted(storage, uri)  # nothing there yet
    first = write_images(storage, uri, {"size": 1})
    reference = outputref.ref(storage, uri)
    assert reference == f"{uri}#{first[:16]}" and outputref.split(reference) == (uri, first[:16])
    assert outputref.plain(reference) == uri and outputref.trusted(storage, reference)
    second = write_images(storage, uri, {"size": 2})  # the step reran with another config: a new version
    assert second != first and outputref.ref(storage, uri) == f"{uri}#{second[:16]}"
    assert not outputref.trusted(storage, reference)  # the old reference no longer describes what is there
    storage.delete(join(uri, "manifest.json"))  # incomplete (or deleted): nothing trusted
    assert not outputref.trusted(storage, f"{uri}#{second[:16]}")


def test_objects_and_evaluations_are_versioned_by_their_bytes(bucket):
    storage = Storage()
    record = join(bucket, "run", "evaluation", "tasks", "base", "amber.json")
    body = b'{"a": 1}'
    storage.write_bytes(record, body)
    assert outputref.ref(storage, record) == f"{record}#{hashlib.sha256(body).hexdigest()[:16]}"
    evaluation = join(bucket, "run", "evaluation")
    storage.write_bytes(join(evaluation, "metrics.json"), b"{}")
    assert outputref.split(outputref.ref(storage, evaluation))[1] == hashlib.sha256(b"{}").hexdigest()[:16]
    summary = join(bucket, "run", "model")
    storage.write_bytes(join(summary, "train_summary.json"), json.dumps({"fingerprint": "ab" * 32}).encode())
    assert outputref.ref(storage, summary) == f"{summary}#{'ab' * 8}"
    # the run report's folder: complete once report.html (written last) is there; a cached report step
    # returning this folder was distrusted on every rerun before report.html counted as its marker
    report = join(bucket, "run", "report")
    storage.write_bytes(join(report, "headline.json"), b"{}")
    assert not outputref.trusted(storage, report)
    storage.write_bytes(join(report, "report.html"), b"<html>")
    assert outputref.trusted(storage, report)
    assert outputref.split(outputref.ref(storage, report))[1] == hashlib.sha256(b"<html>").hexdigest()[:16]


def test_a_shard_reference_follows_its_input_and_config_and_needs_a_complete_artifact(bucket):
    storage = Storage()
    images, candidates = join(bucket, "run", "images"), join(bucket, "run", "candidates")
    write_images(storage, images, {"size": 1})
    shard = outputref.shard_ref(storage, candidates, images, {"prompts": 5})
    assert shard.startswith(candidates + "#in-")
    assert shard == outputref.shard_ref(storage, candidates, images, {"prompts": 5})  # deterministic
    assert shard != outputref.shard_ref(storage, candidates, images, {"prompts": 4})  # config in it
    write_images(storage, images, {"size": 2})
    assert shard != outputref.shard_ref(storage, candidates, images, {"prompts": 5})  # input's version in it
    assert not outputref.trusted(storage, shard)  # the fan-out has no manifest yet: rerun (finished shards skip)
    write_images(storage, candidates, {"any": 1})
    assert outputref.trusted(storage, shard)


def test_prune_drops_the_cache_entries_whose_outputs_are_gone_or_replaced(bucket, tmp_path):
    """kfp's local cache entry files as kfp 2.17 writes them ({output name: value}); the runner's check."""
    from pipelines.local_cache import CACHE_FOLDER, prune

    storage = Storage()
    images, pairs = join(bucket, "run", "images"), join(bucket, "run", "pairs")
    write_images(storage, images, {"size": 1})
    write_images(storage, pairs, {"margin": 1})
    old_pairs = outputref.ref(storage, pairs)
    folder = tmp_path / "kfp" / CACHE_FOLDER
    folder.mkdir(parents=True)
    entries = {
        "ingest": {"Output": outputref.ref(storage, images), "metrics": {"uri": "/x"}},
        "plan": {"Output": [0, 1]},
        "filter-old": {"Output": old_pairs},
        "deleted": {"Output": join(bucket, "run", "model") + "#0123456789abcdef"},
    }
    for name, entry in entries.items():
        (folder / f"{name}.json").write_text(json.dumps(entry))
    write_images(storage, pairs, {"margin": 2})  # filter reran with another margin since
    entries_read, dropped = prune(str(tmp_path / "kfp"), storage)
    gone = join(bucket, "run", "model") + "#0123456789abcdef"
    assert entries_read == 4 and sorted(dropped) == sorted([old_pairs, gone])
    assert sorted(os.listdir(folder)) == ["ingest.json", "plan.json"]
    assert prune(str(tmp_path / "nowhere"), storage) == (0, [])
