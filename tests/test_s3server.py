"""The loopback S3 server: never orphaned, stale ones of this checkout cleared, nothing served unsigned."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from clipdpo import s3server
from clipdpo.storage import Storage

STARTER = """
import sys, time
from clipdpo import s3server
server = s3server.start(sys.argv[1])
print(server.process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return "Z" not in open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
    except OSError:
        return False


def _wait_dead(pid, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


# Each case starts a server of its own (seconds). SIGKILL stays in the fast lane: no handler or atexit runs,
# only the parent-death signal can stop the server; SIGTERM and SIGINT run in `make test`.
@pytest.mark.parametrize("how", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGKILL])
def test_server_dies_with_the_process_that_started_it(tmp_path, how):
    # SIGINT back to its default in the child: a test run started in the background (`make test &`, nohup)
    # ignores SIGINT, the child inherits that, and Python then never raises KeyboardInterrupt (a 120 s hang)
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "s3")], stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    weed_pid = int(starter.stdout.readline())
    assert _alive(weed_pid)
    starter.send_signal(how)
    starter.wait(timeout=30)
    assert _wait_dead(weed_pid), f"weed {weed_pid} outlived its starter ({how!r})"


@pytest.mark.slow  # starts two servers one after the other: ~10 s
def test_stale_server_of_this_dir_is_cleared_and_others_are_left_alone(tmp_path):
    data_dir = str(tmp_path / "s3")
    os.makedirs(data_dir)
    # A server left behind by a dead run: started without the parent-death signal, owner pid gone.
    stale = subprocess.Popen([s3server.weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1",
                              "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                              *[f"-{flag}={port}" for flag, port in zip(s3server._PORT_FLAGS,
                                                                        s3server._free_ports(len(s3server._PORT_FLAGS)))]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=data_dir)
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    with open(os.path.join(data_dir, s3server.PID_FILE), "w") as handle:
        json.dump({"pid": stale.pid, "owner_pid": dead_owner.pid, "endpoint": "?"}, handle)
    bystander = subprocess.Popen(["sleep", "60"])  # someone else's process, named by a bogus pid file
    other_dir = str(tmp_path / "other")
    os.makedirs(other_dir)
    with open(os.path.join(other_dir, s3server.PID_FILE), "w") as handle:
        json.dump({"pid": bystander.pid, "owner_pid": dead_owner.pid}, handle)
    try:
        server = s3server.start(data_dir)
        try:
            stale.wait(timeout=15)  # stopped by start(), which then waited for its own server to answer
            assert server.process.poll() is None
        finally:
            server.stop()
        s3server.clear_stale(other_dir)
        assert bystander.poll() is None  # not weed on that dir: never touched
    finally:
        bystander.kill()
        if stale.poll() is None:
            stale.kill()


def _listening_ports(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        match = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                ports.add((address, int(port, 16)))
    return ports


def test_every_open_port_is_loopback_and_refuses_unsigned_reads(s3_server, bucket):
    storage = Storage()
    payload = b"PRIVATE-PAYLOAD-" + os.urandom(8).hex().encode()
    storage.write_bytes(f"{bucket}/dir/object.bin", payload)
    name = bucket[len("s3://"):]
    ports = _listening_ports(s3_server.process.pid)
    assert ports and all(address == "0100007F" for address, _ in ports), ports  # 127.0.0.1 only
    assert len(ports) <= 10  # master, volume, filer, s3, admin: http + grpc each; no extras
    paths = [f"/{name}/dir/object.bin", f"/buckets/{name}/dir/object.bin", f"/buckets/{name}/dir/",
             f"/{name}?list-type=2", "/"]
    for _, port in sorted(ports):
        for path in paths:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
                    body, status = response.read(), response.status
            except urllib.error.HTTPError as err:
                body, status = err.read(), err.code
            except (urllib.error.URLError, ConnectionError, OSError):
                continue  # gRPC ports drop plain HTTP
            assert payload not in body, (port, path, status)
            if path != "/":
                assert status >= 400, (port, path, status)
