"""The KFP client CI and `make pipeline-run` use: credentials from KFP_TOKEN / KFP_TOKEN_FILE sent as a bearer
token, and one active retraining per branch. Against a loopback stand-in for the KFP v2beta1 REST API that,
like a multi-user Kubeflow behind its auth proxy, answers 401 to a request without the right token."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from clipdpo.cluster import kfpclient

TOKEN = "kfp-test-token"


class FakeKfp:
    def __init__(self, runs: list[dict]):
        self.runs, self.auth_headers, self.terminated = runs, [], []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/apis/v2beta1/healthz":  # kfp.Client asks at start: single-user or multi-user
                    return self._send(200, {"multi_user": True})
                owner.auth_headers.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"error": "Unauthorized", "code": 16})
                if url.path == "/apis/v2beta1/experiments":
                    name = json.loads(parse_qs(url.query)["filter"][0])["predicates"][0]["stringValue"]
                    found = [{"experiment_id": "exp-1", "display_name": name}] if name == "clipdpo" else []
                    return self._send(200, {"experiments": found, "total_size": len(found)})
                if url.path == "/apis/v2beta1/runs":
                    assert parse_qs(url.query)["experiment_id"] == ["exp-1"]
                    return self._send(200, {"runs": owner.runs, "total_size": len(owner.runs)})
                return self._send(404, {"error": url.path})

            def do_POST(self):  # POST /apis/v2beta1/runs/<id>:terminate: the run goes to CANCELING
                url = urlparse(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"error": "Unauthorized", "code": 16})
                run_id = url.path.removeprefix("/apis/v2beta1/runs/").removesuffix(":terminate")
                found = [run for run in owner.runs if run["run_id"] == run_id and url.path.endswith(":terminate")]
                if not found:
                    return self._send(404, {"error": url.path})
                found[0]["state"] = "CANCELING"
                owner.terminated.append(run_id)
                return self._send(200, {})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def run(name: str, state: str, run_id: str) -> dict:
    return {"run_id": run_id, "display_name": name, "state": state, "experiment_id": "exp-1"}


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp reads its context file from ~/.config/kfp
    servers = []

    def start(runs):
        servers.append(FakeKfp(runs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_the_token_in_the_environment_is_sent_and_without_it_kfp_answers_401(kfp_server):
    import kfp
    from kfp_server_api.exceptions import ApiException

    server = kfp_server([run("clipdpo-ci-main-7", "RUNNING", "k7")])
    client = kfpclient.make_client(server.host, env={"KFP_TOKEN": TOKEN})
    runs = kfpclient.runs_with_prefix(client, "clipdpo", "clipdpo-ci-main-")
    assert runs == [kfpclient.RunView("k7", "clipdpo-ci-main-7", "RUNNING")]
    assert server.auth_headers and set(server.auth_headers) == {f"Bearer {TOKEN}"}
    # what pipelines/run.py built before: kfp.Client(host=...) sends no credentials
    bare = kfp.Client(host=server.host)
    with pytest.raises(ApiException) as raised:
        bare.list_runs(experiment_id="exp-1")
    assert raised.value.status == 401 and server.auth_headers[-1] is None


def test_the_token_can_come_from_a_file_and_bad_settings_say_which(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert kfpclient.client_arguments("https://kfp", "team-a", {"KFP_TOKEN_FILE": str(token_file)}) == {
        "host": "https://kfp",
        "namespace": "team-a",
        "existing_token": TOKEN,
    }
    assert kfpclient.client_arguments("https://kfp", "", {}) == {"host": "https://kfp", "namespace": None}
    token_file.write_text("")
    with pytest.raises(kfpclient.KfpConfigError, match="KFP_TOKEN_FILE=.*empty"):
        kfpclient.client_arguments("https://kfp", None, {"KFP_TOKEN_FILE": str(token_file)})
    with pytest.raises(kfpclient.KfpConfigError, match="KFP_HOST is empty"):
        kfpclient.client_arguments("", None, {})


def test_one_active_retraining_per_branch(kfp_server, monkeypatch, capsys, tmp_path):
    server = kfp_server(
        [
            run("clipdpo-ci-main-8", "RUNNING", "k8"),
            run("clipdpo-ci-dev-3", "PENDING", "k3"),
            run("clipdpo-ci-main-7", "SUCCEEDED", "k7"),
        ]
    )
    monkeypatch.setenv("KFP_HOST", server.host)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert kfpclient.main(["guard", "--prefix", "clipdpo-ci-main-"]) == 3
    assert "clipdpo-ci-main-8 (RUNNING, KFP run k8)" in capsys.readouterr().err
    assert kfpclient.main(["guard", "--prefix", "clipdpo-ci-other-"]) == 0  # another branch is not held up
    server.runs[0]["state"] = "FAILED"
    server.runs[1]["state"] = "CANCELING"  # still holding pods
    assert kfpclient.main(["guard", "--prefix", "clipdpo-ci-main-"]) == 0
    assert kfpclient.main(["guard", "--prefix", "clipdpo-ci-dev-"]) == 3


def test_latest_tells_the_gate_job_whether_the_newest_run_ended(kfp_server, monkeypatch, tmp_path):
    server = kfp_server([run("clipdpo-ci-main-8", "RUNNING", "k8"), run("clipdpo-ci-main-7", "SUCCEEDED", "k7")])
    monkeypatch.setenv("KFP_HOST", server.host)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    out = tmp_path / "github_output"
    assert kfpclient.main(["latest", "--prefix", "clipdpo-ci-main-", "--github-output", str(out)]) == 0
    assert out.read_text() == "state=RUNNING\nended=false\nrun_id=ci-main-8\nkfp_run_id=k8\n"
    server.runs[0]["state"] = "SUCCEEDED"
    out.write_text("")
    kfpclient.main(["latest", "--prefix", "clipdpo-ci-main-", "--github-output", str(out)])
    assert out.read_text() == "state=SUCCEEDED\nended=true\nrun_id=ci-main-8\nkfp_run_id=k8\n"
    monkeypatch.delenv("KFP_TOKEN")
    monkeypatch.setenv("KFP_HOST", "")
    assert kfpclient.main(["latest", "--prefix", "x"]) == 2


def test_cancel_terminates_the_active_runs_so_named_and_only_those(kfp_server, monkeypatch, capsys):
    server = kfp_server(
        [
            run("clipdpo-first-run", "RUNNING", "k1"),
            run("clipdpo-first-run-old", "SUCCEEDED", "k0"),
            run("clipdpo-other", "RUNNING", "k2"),
        ]
    )
    monkeypatch.setenv("KFP_HOST", server.host)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert kfpclient.main(["cancel", "--prefix", "clipdpo-first-run"]) == 0
    assert server.terminated == ["k1"] and "terminated clipdpo-first-run (KFP run k1, was RUNNING)" in (
        capsys.readouterr().out
    )
    assert kfpclient.main(["cancel", "--prefix", "clipdpo-first-run"]) == 0  # CANCELING: asked once more
    assert kfpclient.main(["cancel", "--prefix", "clipdpo-none"]) == 0
    assert "no active run named clipdpo-none*: nothing to cancel" in capsys.readouterr().err
    assert server.terminated == ["k1", "k1"]
