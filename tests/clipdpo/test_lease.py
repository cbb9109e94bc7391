"""One config writes an output at a time: the lease, and two real processes racing for one output."""

import io
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from clipdpo.storage import Storage


@pytest.mark.parametrize("scheme", ["s3", "local"])
def test_lease_excludes_other_configs_shares_same_and_lapses(scheme, bucket, tmp_path):
    from clipdpo.lease import LEASE_NAME, Lease, LeaseHeld

    uri = f"{bucket}/out" if scheme == "s3" else str(tmp_path / "out")
    storage = Storage()
    first = Lease(storage, uri, "a" * 64, ttl_s=60)
    first.check()
    other = Lease(storage, uri, "b" * 64, ttl_s=60)
    with pytest.raises(LeaseHeld, match=rf"being written by another run .*{first.owner}.*fingerprint aaaaaaaaaaaa"):
        other.check()
    Lease(storage, uri, "a" * 64, ttl_s=60).check()  # same fingerprint (a fan-out sibling): shared
    # A lapsed lease (its run died) is taken over, and the old holder learns it lost it.
    body = json.loads(storage.read_bytes(f"{uri}/{LEASE_NAME}"))
    storage.write_bytes(f"{uri}/{LEASE_NAME}", json.dumps({**body, "expires_unix": time.time() - 1}).encode())
    other.check()
    with pytest.raises(LeaseHeld, match=other.owner):
        first.check()
    other.release()
    assert not storage.exists(f"{uri}/{LEASE_NAME}")
    first.check()  # free again


def _png(i) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (i * 7 % 256, i * 13 % 256, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _snapshot(storage, uri):
    """Every object under an artifact, bytes as-is, except the manifest's timing fields."""
    out = {}
    for obj in storage.list(uri):
        data = storage.read_bytes(obj)
        if obj.endswith("manifest.json"):
            body = json.loads(data)
            body.pop("created_unix")
            for shard in body["shards"]:
                shard["stats"].pop("seconds")
            body["stats"].pop("seconds")
            data = json.dumps(body, sort_keys=True).encode()
        elif "/_done/" in obj:
            body = json.loads(data)
            body["stats"].pop("seconds")
            data = json.dumps(body, sort_keys=True).encode()
        out[obj[len(uri) + 1 :]] = data
    return out


@pytest.mark.slow  # two ingest processes racing for one output: interpreter start-ups, seconds
def test_two_processes_with_different_configs_one_output(bucket):
    storage = Storage()
    for i in range(24):
        storage.write_bytes(f"{bucket}/raw/img{i:02d}.png", _png(i))
    output = f"{bucket}/images"

    def start(name):
        argv = [
            sys.executable,
            "-m",
            "clipdpo.ingest",
            "--source",
            f"{bucket}/raw",
            "--output",
            output,
            "--set",
            "shard_size=1",
            "--set",
            f"source_name={name}",
        ]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))

    runs = {name: start(name) for name in ("first", "second")}
    results = {name: (proc.wait(timeout=240), proc.stderr.read()) for name, proc in runs.items()}
    winners = [name for name, (code, _) in results.items() if code == 0]
    assert len(winners) == 1, {name: (code, err[-600:]) for name, (code, err) in results.items()}
    loser_code, loser_err = next(result for name, result in results.items() if name not in winners)
    assert loser_code == 2 and "Traceback" not in loser_err
    error_lines = [line for line in loser_err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    assert (
        "being written by another run with a different config" in error_lines[0]
        or "already holds a complete 'images' artifact" in error_lines[0]
    ), error_lines[0]
    # The winner's artifact is exactly what a clean single run of its config writes.
    clean = f"{bucket}/clean"
    argv = [
        "--source",
        f"{bucket}/raw",
        "--output",
        clean,
        "--set",
        "shard_size=1",
        "--set",
        f"source_name={winners[0]}",
    ]
    from clipdpo.ingest.__main__ import main

    assert main(argv) == 0
    assert _snapshot(storage, output) == _snapshot(storage, clean)
