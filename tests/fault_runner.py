"""Test-side fault injection: run a stage's `main` and SIGKILL this process at a chosen point.

    python tests/fault_runner.py PHASE N STAGE ARGV...

PHASE (N counts the matching storage calls, from 1):
  none            run normally (the test kills from outside at a random moment)
  mid_shard       the N-th shard's data file torn in half on the store, then killed
  before_done     the N-th shard's data file written, killed before its done-record
  torn_manifest   half of the manifest written, then killed (a store without atomic PUT)
  during_cleanup  the manifest written, killed at the N-th delete of an overwritten run's file

The product has no kill switch: the hooks wrap `Storage` here, in the test's process only.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from clipdpo.storage import Storage


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(phase: str, nth: int) -> None:
    write_bytes, upload_file, delete = Storage.write_bytes, Storage.upload_file, Storage.delete
    seen = {"calls": 0}

    def hit() -> bool:
        seen["calls"] += 1
        return seen["calls"] == nth

    def upload(self, local_path, uri):
        if phase == "mid_shard" and hit():
            with open(local_path, "rb") as handle:
                data = handle.read()
            write_bytes(self, uri, data[: len(data) // 2])
            _die()
        return upload_file(self, local_path, uri)

    def write(self, uri, data):
        if phase == "before_done" and "/_done/" in uri and hit():
            _die()
        if phase == "torn_manifest" and uri.endswith("/manifest.json") and hit():
            write_bytes(self, uri, data[: len(data) // 2])
            _die()
        return write_bytes(self, uri, data)

    def remove(self, uri):
        if phase == "during_cleanup" and hit():
            _die()
        return delete(self, uri)

    Storage.upload_file, Storage.write_bytes, Storage.delete = upload, write, remove


if __name__ == "__main__":
    phase, nth, stage, *argv = sys.argv[1:]
    install(phase, int(nth))
    raise SystemExit(importlib.import_module(f"clipdpo.{stage}.__main__").main(argv))
