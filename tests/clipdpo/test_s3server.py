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
@pytest.mark.parametrize(
    "how",
    [
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
        signal.SIGKILL,
    ],
)
def test_server_dies_with_the_process_that_started_it(tmp_path, how):
    # SIGINT back to its default in the child: a test run started in the background (`make test &`, nohup)
    # ignores SIGINT, the child inherits that, and Python then never raises KeyboardInterrupt (a 120 s hang)
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "s3")],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
    stale = subprocess.Popen(
        [
            s3server.weed_binary(),
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            *[
                f"-{flag}={port}"
                for flag, port in zip(s3server._PORT_FLAGS, s3server._free_ports(len(s3server._PORT_FLAGS)))
            ],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=data_dir,
    )
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
    name = bucket[len("s3://") :]
    ports = _listening_ports(s3_server.process.pid)
    assert ports and all(address == "0100007F" for address, _ in ports), ports  # 127.0.0.1 only
    assert len(ports) <= 10  # master, volume, filer, s3, admin: http + grpc each; no extras
    paths = [
        f"/{name}/dir/object.bin",
        f"/buckets/{name}/dir/object.bin",
        f"/buckets/{name}/dir/",
        f"/{name}?list-type=2",
        "/",
    ]
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


# -- every door of the loopback S3, tried from another process's side: only S3 signed with this start's
# credentials gets in; the internal ports want a client certificate from this start's authority.

OLD_FIXED_CREDENTIALS = ("clipdpo-local", "clipdpo-local-secret")  # the constants every run used to share
INTERNAL_HTTP = ("master.port", "volume.port", "filer.port", "admin.port")
INTERNAL_GRPC = ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc", "admin.port.grpc")
# The master's and volume server's status pages, the filer's listing, the admin's health and metrics.
STATUS_PATHS = ("/", "/dir/status", "/cluster/status", "/vol/status", "/status", "/health", "/metrics")


def _weed_ports(server):
    """Flag -> port, from the running weed's command line (what another local process can see too)."""
    argv = open(f"/proc/{server.process.pid}/cmdline", "rb").read().decode().split("\0")
    pairs = [arg[1:].split("=", 1) for arg in argv if arg.startswith("-") and "=" in arg]
    return {flag: int(value) for flag, value in pairs if flag in s3server._PORT_FLAGS}


def _put_private_object(bucket):
    payload = b"PRIVATE-PAYLOAD-" + os.urandom(8).hex().encode()
    Storage().write_bytes(f"{bucket}/dir/object.bin", payload)
    return payload


def _s3_client(endpoint, access_key, secret_key, **config):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, **config),
    )


def _s3_error_code(call):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"]


def test_s3_refuses_unsigned_wrongly_signed_and_the_old_fixed_credentials(s3_server, bucket):
    from botocore import UNSIGNED

    payload = _put_private_object(bucket)
    name = bucket[len("s3://") :]
    url = f"{s3_server.endpoint_url}/{name}/dir/object.bin"
    for method, data in (("GET", None), ("PUT", b"overwritten"), ("DELETE", None)):
        request = urllib.request.Request(url, data=data, method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403 and payload not in refused.value.read(), method
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{s3_server.endpoint_url}/{name}?list-type=2", timeout=5)
    assert refused.value.code == 403 and b"object.bin" not in refused.value.read()

    get = {"Bucket": name, "Key": "dir/object.bin"}
    endpoint, env = s3_server.endpoint_url, s3_server.env
    anonymous = _s3_client(endpoint, None, None, signature_version=UNSIGNED)
    assert _s3_error_code(lambda: anonymous.get_object(**get)) == "AccessDenied"
    wrong_secret = _s3_client(endpoint, env["AWS_ACCESS_KEY_ID"], "0" * 64)
    assert _s3_error_code(lambda: wrong_secret.get_object(**get)) == "SignatureDoesNotMatch"
    old_constants = _s3_client(endpoint, *OLD_FIXED_CREDENTIALS)
    assert _s3_error_code(lambda: old_constants.get_object(**get)) == "InvalidAccessKeyId"
    assert Storage().read_bytes(f"{bucket}/dir/object.bin") == payload  # nothing above changed it


@pytest.fixture(scope="module")
def other_authority(tmp_path_factory):
    """A certificate from an authority that is not this start's: what a forger could present."""
    from clipdpo import s3security

    return s3security.write_tls_material(tmp_path_factory.mktemp("other-ca"))


def _run_tls(server):
    tls = os.path.join(server.data_dir, "tls")
    return {"ca": f"{tls}/ca.crt", "cert": f"{tls}/weed.crt", "key": f"{tls}/weed.key"}


def _grpc_credentials(trusted_ca, client=None):
    """Channel credentials that trust `trusted_ca` and present `client`'s certificate (none when None)."""
    import grpc

    read = lambda path: open(path, "rb").read()  # noqa: E731
    if client is None:
        return grpc.ssl_channel_credentials(read(trusted_ca))
    return grpc.ssl_channel_credentials(read(trusted_ca), read(client["key"]), read(client["cert"]))


def _knocks(run_tls, other_authority):
    """(how, credentials factory) for each way in without this start's certificate; plaintext first (no TLS
    files read), the door a server without TLS leaves open."""
    return [
        ("plaintext", lambda: None),
        ("TLS, no client certificate", lambda: _grpc_credentials(run_tls["ca"])),
        ("TLS, another authority's certificate", lambda: _grpc_credentials(run_tls["ca"], other_authority)),
    ]


def _pb_string(field, text):
    """One protobuf length-delimited field (every string below is shorter than 128 bytes)."""
    data = text.encode()
    assert len(data) < 128
    return bytes([field << 3 | 2, len(data)]) + data


def _grpc_call(target, method, request, credentials, stream=False):
    """One raw gRPC call (the filer's protobuf written by hand): what `weed shell` sends for fs.ls / fs.rm."""
    import grpc

    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        if stream:
            call = channel.unary_stream(method, request_serializer=bytes, response_deserializer=bytes)
            return b"".join(call(request, timeout=5))
        call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        return call(request, timeout=5)


def test_filer_grpc_lists_and_deletes_only_with_this_starts_certificate(s3_server, bucket, other_authority):
    import grpc

    payload = _put_private_object(bucket)
    directory = f"/buckets/{bucket[len('s3://') :]}/dir"
    list_request = _pb_string(1, directory)  # ListEntriesRequest{directory}
    delete_request = _pb_string(1, directory) + _pb_string(2, "object.bin") + bytes([4 << 3, 1])  # is_delete_data
    port = _weed_ports(s3_server)["filer.port.grpc"]
    run_tls = _run_tls(s3_server)
    # The TCP port, and the Unix socket weed also serves gRPC on (same user only: 0700 under its umask).
    targets = [f"127.0.0.1:{port}", f"unix:///tmp/seaweedfs-filer-grpc-{port}.sock"]
    for target in targets:
        for knock, credentials in _knocks(run_tls, other_authority):
            for method, request, stream in (
                ("ListEntries", list_request, True),
                ("DeleteEntry", delete_request, False),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    _grpc_call(target, f"/filer_pb.SeaweedFiler/{method}", request, credentials(), stream)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (target, knock, method)
    assert Storage().read_bytes(f"{bucket}/dir/object.bin") == payload
    # This start's certificate opens it: the refusals above were the lock, not a wrong port or request.
    listing = _grpc_call(
        targets[0],
        "/filer_pb.SeaweedFiler/ListEntries",
        list_request,
        _grpc_credentials(run_tls["ca"], run_tls),
        stream=True,
    )
    assert b"object.bin" in listing


def test_every_internal_grpc_port_wants_this_starts_certificate(s3_server, other_authority):
    """A call to a method no server has: a server that lets the client in answers UNIMPLEMENTED; a refused
    handshake is UNAVAILABLE. Master, volume, filer, S3 gateway and admin alike."""
    import grpc

    run_tls = _run_tls(s3_server)
    ports = _weed_ports(s3_server)
    for flag in INTERNAL_GRPC:
        target = f"127.0.0.1:{ports[flag]}"
        for knock, credentials in _knocks(run_tls, other_authority):
            with pytest.raises(grpc.RpcError) as refused:
                _grpc_call(target, "/probe.Nothing/Here", b"", credentials())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (flag, knock, refused.value.details())
        with pytest.raises(grpc.RpcError) as answered:
            _grpc_call(target, "/probe.Nothing/Here", b"", _grpc_credentials(run_tls["ca"], run_tls))
        assert answered.value.code() == grpc.StatusCode.UNIMPLEMENTED, flag


def _https_get(port, path, context):
    import http.client

    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_master_volume_filer_admin_status_pages_want_this_starts_certificate(s3_server, bucket, other_authority):
    import http.client
    import ssl

    payload = _put_private_object(bucket)
    name = bucket[len("s3://") :]
    ports = _weed_ports(s3_server)
    run_tls = _run_tls(s3_server)
    paths = STATUS_PATHS + (f"/buckets/{name}/dir/", f"/buckets/{name}/dir/object.bin")
    for flag in INTERNAL_HTTP:
        for path in paths:
            try:  # plain HTTP, as curl or a browser would try first
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[flag]}{path}", timeout=5) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as err:
                status, body = err.code, err.read()
            assert status >= 400 and payload not in body and b"Topology" not in body, (flag, path, status)
    no_certificate = ssl.create_default_context(cafile=run_tls["ca"])
    forged = ssl.create_default_context(cafile=run_tls["ca"])
    forged.load_cert_chain(other_authority["cert"], other_authority["key"])
    for flag in INTERNAL_HTTP:
        port = ports[flag]
        for _knock, context in (("no client certificate", no_certificate), ("forged certificate", forged)):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
                _https_get(port, "/dir/status" if flag == "master.port" else "/status", context)
    # This start's certificate opens the master's status page: the refusals above were the lock.
    trusted = ssl.create_default_context(cafile=run_tls["ca"])
    trusted.load_cert_chain(run_tls["cert"], run_tls["key"])
    status, body = _https_get(ports["master.port"], "/dir/status", trusted)
    assert status == 200 and b"Topology" in body


def test_data_files_are_the_users_alone(s3_server, bucket):
    """Folders 0700, files 0600: the volumes, the filer's store, the keys, the log; and the Unix sockets
    weed puts in /tmp connect for this user only. `.vif` files (volume version and size, no object data)
    weed itself writes 0644 (an explicit fchmod, past the umask); the 0700 folders keep them private."""
    payload = _put_private_object(bucket)
    seen = set()
    for root, _folders, files in os.walk(s3_server.data_dir):
        assert os.stat(root).st_mode & 0o777 == 0o700, root
        for name in files:
            path = os.path.join(root, name)
            mode = os.stat(path).st_mode & 0o777
            seen.add(name.rsplit(".", 1)[-1])
            if name.endswith(".vif"):
                assert mode & 0o022 == 0 and payload not in open(path, "rb").read(), path
            else:
                assert mode == 0o600, (path, oct(mode))
    assert {"dat", "idx", "log", "toml", "key"} <= seen  # volumes, weed.log and the filer's, the secrets
    sockets = [
        f"/tmp/seaweedfs-{kind}-{port}.sock"
        for kind, port in (
            ("filer", s3_server.ports["filer.port"]),
            ("filer-grpc", s3_server.ports["filer.port.grpc"]),
            ("master-grpc", s3_server.ports["master.port.grpc"]),
            ("s3", s3_server.ports["s3.port"]),
        )
    ]
    for socket_path in sockets:
        assert os.stat(socket_path).st_mode & 0o777 == 0o700, socket_path


def test_a_dead_server_is_named_not_blamed_on_the_endpoint(s3_server, tmp_path, monkeypatch):
    from clipdpo.storage import StorageError

    own = s3server.start(str(tmp_path / "s3"))
    try:
        assert own.env["AWS_ACCESS_KEY_ID"] != s3_server.env["AWS_ACCESS_KEY_ID"]  # two starts, two key pairs
        assert own.env["AWS_SECRET_ACCESS_KEY"] != s3_server.env["AWS_SECRET_ACCESS_KEY"]
        for key, value in own.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("CLIPDPO_S3_MAX_ATTEMPTS", "1")
        Storage().ensure_bucket("s3://mid-run/x")
        assert own.death_note() is None
        own.process.kill()  # dies mid-run
        own.process.wait()
        with pytest.raises(StorageError) as gone:
            Storage().read_bytes("s3://mid-run/x")
    finally:
        own.stop(grace_s=0)
    message = str(gone.value)
    assert "AWS_ENDPOINT_URL" not in message, message  # the endpoint is right: the server is gone
    assert "died" in message and own.log_path in message and own.endpoint_url in message, message
    assert "exit status -9" in own.death_note() and own.log_path in own.death_note()


def test_a_restart_locks_an_old_folder_down_and_the_last_credentials_open_nothing(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "s3")
    first = s3server.start(data_dir)
    try:
        for key, value in first.env.items():
            monkeypatch.setenv(key, value)
        Storage().ensure_bucket("s3://kept/x")
        Storage().write_bytes("s3://kept/dir/object.bin", b"kept")
    finally:
        first.stop(grace_s=0)
    # The folder as a run from before the lock-down left it: world-readable, and a world-readable env file.
    for root, _folders, files in os.walk(data_dir):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    env_file = tmp_path / "s3.env"
    env_file.write_text("AWS_SECRET_ACCESS_KEY=from-an-earlier-run\n")
    env_file.chmod(0o644)
    cli = subprocess.Popen(
        [sys.executable, "-m", "clipdpo.s3server", "--dir", data_dir, "--env-file", str(env_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "S3 server on" in cli.stdout.readline()
        assert env_file.stat().st_mode & 0o777 == 0o600
        second = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert second["AWS_ACCESS_KEY_ID"] != first.credentials.access_key
        assert second["AWS_SECRET_ACCESS_KEY"] != first.credentials.secret_key
        assert not set(OLD_FIXED_CREDENTIALS) & set(second.values())
        modes = {
            os.path.join(root, name): os.stat(os.path.join(root, name)).st_mode & 0o777
            for root, _, files in os.walk(data_dir)
            for name in files
        }
        assert [path for path in modes if path.endswith(".dat")], modes
        assert all(mode == 0o600 for path, mode in modes.items() if not path.endswith(".vif")), modes
        assert all(os.stat(root).st_mode & 0o777 == 0o700 for root, _, _ in os.walk(data_dir))
        endpoint = second["AWS_ENDPOINT_URL"]
        earlier = _s3_client(endpoint, first.credentials.access_key, first.credentials.secret_key)
        assert _s3_error_code(lambda: earlier.get_object(Bucket="kept", Key="dir/object.bin")) == "InvalidAccessKeyId"
        now = _s3_client(endpoint, second["AWS_ACCESS_KEY_ID"], second["AWS_SECRET_ACCESS_KEY"])
        assert now.get_object(Bucket="kept", Key="dir/object.bin")["Body"].read() == b"kept"
    finally:
        cli.kill()  # its server gets SIGTERM from the parent-death signal
        cli.wait()


def test_weed_variables_of_the_callers_shell_cannot_undo_the_lock(tmp_path, monkeypatch):
    """weed lets WEED_* variables override security.toml: the lock must be this start's alone, whatever the
    caller's shell holds (with this WEED_GRPC_CA, naming a missing file, weed passed it on did not come up)."""
    import grpc

    monkeypatch.setenv("WEED_GRPC_CA", str(tmp_path / "no-such-ca.pem"))
    own = s3server.start(str(tmp_path / "s3"))
    try:
        for flag in ("master.port.grpc", "filer.port.grpc"):
            with pytest.raises(grpc.RpcError) as refused:
                _grpc_call(f"127.0.0.1:{own.ports[flag]}", "/probe.Nothing/Here", b"", None)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, flag
    finally:
        own.stop(grace_s=0)


def test_security_toml_gives_every_component_this_starts_files(tmp_path):
    """Parsed back as weed reads it: each gRPC component and HTTPS server has the certificate, the CA and
    the JWT keys; a path with quotes, a backslash and non-ASCII survives the quoting."""
    import tomllib

    from clipdpo import s3security

    odd = tmp_path / 'a "quoted" \\ földer'
    tls = s3security.write_security(odd)
    assert set(tls) == {"ca", "cert", "key"} and all(os.path.exists(path) for path in tls.values())
    config = tomllib.loads((odd / s3security.SECURITY_FILE).read_text())
    assert config["grpc"]["ca"] == tls["ca"]
    for component in ("master", "volume", "filer", "s3", "admin", "worker", "client"):
        assert config["grpc"][component] == {"cert": tls["cert"], "key": tls["key"]}, component
    assert config["https"]["client"] == {"enabled": True, "cert": tls["cert"], "key": tls["key"], "ca": tls["ca"]}
    for server in ("master", "volume", "filer", "admin"):
        assert config["https"][server] == {"cert": tls["cert"], "key": tls["key"], "ca": tls["ca"]}, server
    keys = [
        config["jwt"]["signing"]["key"],
        config["jwt"]["signing"]["read"]["key"],
        config["jwt"]["filer_signing"]["key"],
        config["jwt"]["filer_signing"]["read"]["key"],
    ]
    assert len(set(keys)) == 4 and all(len(key) == 64 for key in keys)
