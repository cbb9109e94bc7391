"""A lease on an artifact's output prefix: one config writes it at a time.

`<output>/_lease.json` names the owner (host, pid, run id), the fingerprint of what it writes
and an expiry. It is created with a conditional PUT (If-None-Match: *) and renewed or taken
over with If-Match on its ETag, so two runs cannot both believe they hold it; where a store
ignores conditions, the read-back before each shard and before the manifest still catches the
loser. Runs with the *same* fingerprint share the lease (fan-out workers, a resume, a retried
pod): they write the same bytes. A run that dies stops renewing; its lease lapses after the TTL
(`CLIPDPO_LEASE_TTL_S`, default 120 s), so a crash never blocks an output for long.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass

from clipdpo.errors import UserError
from clipdpo.storage import NotFound, PreconditionFailed, Storage, join

LEASE_NAME = "_lease.json"
DEFAULT_TTL_S = 120.0


class LeaseHeld(UserError):
    """Another run, with another config, is writing this output."""


@dataclass(frozen=True)
class LeaseBody:
    owner: str
    fingerprint: str
    expires_unix: float


def lease_ttl_s() -> float:
    return float(os.environ.get("CLIPDPO_LEASE_TTL_S", DEFAULT_TTL_S))


def _held_message(uri: str, body: LeaseBody) -> str:
    expires = time.strftime("%H:%M:%S UTC", time.gmtime(body.expires_unix))
    return (
        f"{uri} is being written by another run with a different config: {body.owner} "
        f"(fingerprint {body.fingerprint[:12]}, lease until {expires} unless renewed); wait for it to finish "
        "or write to another --output (a dead run's lease lapses by itself)"
    )


class Lease:
    def __init__(self, storage: Storage, artifact_uri: str, fingerprint: str, ttl_s: float | None = None):
        self.storage = storage
        self.uri = artifact_uri
        self.where = join(artifact_uri, LEASE_NAME)
        self.fingerprint = fingerprint
        self.ttl_s = ttl_s or lease_ttl_s()
        self.owner = f"{socket.gethostname()} pid {os.getpid()} run {uuid.uuid4().hex[:8]}"
        self._released = False
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None

    def _read(self) -> tuple[LeaseBody | None, str | None]:
        try:
            data, version = self.storage.read_versioned(self.where)
        except NotFound:
            return None, None
        try:
            return LeaseBody(**json.loads(data)), version
        except (ValueError, TypeError):
            return LeaseBody("a torn lease", "", 0.0), version  # lapsed: anyone may replace it

    def check(self) -> None:
        """Hold the lease (take it, renew it, or share it) or raise `LeaseHeld` naming the owner."""
        with self._lock:
            self._released = False
            self._hold()
        self._start_heartbeat()

    def _hold(self) -> None:
        if self._lost:
            raise LeaseHeld(self._lost)
        for _ in range(5):  # a lost race re-reads the lease and decides again
            body, version = self._read()
            if body is not None and body.fingerprint != self.fingerprint and body.expires_unix > time.time():
                raise LeaseHeld(_held_message(self.uri, body))
            mine = LeaseBody(self.owner, self.fingerprint, time.time() + self.ttl_s)
            try:
                self.storage.write_if(self.where, json.dumps(asdict(mine)).encode(), version)
            except PreconditionFailed:
                continue
            if self._read()[0] == mine:  # read-back: covers stores that ignore conditions
                return
        body, _ = self._read()
        raise LeaseHeld(_held_message(self.uri, body) if body else f"{self.where}: contended, try again")

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None:
            return
        ref = weakref.ref(self)
        self._heartbeat = threading.Thread(
            target=_renew_until_gone, args=(ref, self.ttl_s / 3), daemon=True, name=f"lease {self.uri}"
        )
        self._heartbeat.start()

    def renew_in_background(self) -> bool:
        """One heartbeat; False once the lease is lost or released."""
        try:
            with self._lock:
                if self._released:
                    return False
                self._hold()
        except LeaseHeld as err:
            self._lost = f"lost the lease on {self.uri}: {err}"
            return False
        except Exception:  # a transient storage error: the next beat retries
            pass
        return True

    def release(self) -> None:
        with self._lock:
            self._released = True
            self._heartbeat = None
            body, version = self._read()
            if body is not None and body.owner == self.owner and version is not None:
                self.storage.delete_if(self.where, version)


def _renew_until_gone(ref: "weakref.ref[Lease]", interval_s: float) -> None:
    while True:
        time.sleep(interval_s)
        lease = ref()
        if lease is None or not lease.renew_in_background():
            return
        del lease
