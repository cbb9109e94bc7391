"""A local run stopped by SIGTERM or Ctrl-C ends the processes it started (pipelines/local_stop.py): kfp's steps,
their children, and the step still queued in kfp's pool; it says what it ended and exits with 128 + the signal.

The run is the product's command line and run_local with a stand-in pipeline whose steps hold `sleep` children
(tests/holding_pipeline.py); the test watches the processes with psutil, not with the code under test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pipelines.local_stop import descendants, end_tree

ROOT = Path(__file__).resolve().parents[2]
HOLDING = str(ROOT / "tests" / "holding_pipeline.py")
STEPS_AT_ONCE = 2  # kfp's local pool; the stand-in's third iteration waits in its queue
START_S = 120.0  # imports and kfp's start on a loaded 2-core machine


def holding_sleeps(seconds: str) -> list[psutil.Process]:
    """The `sleep SECONDS` processes alive anywhere: a run's steps', orphaned or not (the length is this test's)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == ["sleep", seconds] and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_steps(runner: subprocess.Popen, seconds: str) -> list[psutil.Process]:
    """Every process below the runner once STEPS_AT_ONCE steps each hold their `sleep`."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        assert runner.poll() is None, runner.communicate()
        below = psutil.Process(runner.pid).children(recursive=True)
        if sum(p.cmdline() == ["sleep", seconds] for p in below if running(p)) >= STEPS_AT_ONCE:
            return below
        time.sleep(0.2)
    raise AssertionError(f"no {STEPS_AT_ONCE} steps holding `sleep {seconds}` after {START_S}s")


class Unstopped(Exception):
    """What SIGTERM / SIGINT raise in this test process where run_local does not handle them."""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_local_run_ends_its_steps_and_exits_128_plus_the_signal(
    tmp_path, monkeypatch, capsys, signum
):
    """In-process: run_local with a pipeline whose step is a child holding a child, as kfp's runner starts one."""
    import pipelines.clipdpo_pipeline as pipeline_module
    import pipelines.run as run

    held: list[psutil.Process] = []

    def pipeline_signalled_mid_step(**_arguments):
        step = subprocess.Popen(["sh", "-c", "sleep 60; :"])
        deadline = time.monotonic() + 10
        while not psutil.Process(step.pid).children() and time.monotonic() < deadline:
            time.sleep(0.02)
        held.extend([psutil.Process(step.pid), *psutil.Process(step.pid).children()])
        os.kill(os.getpid(), signum)  # as `kill` or Ctrl-C would
        step.wait()
        raise AssertionError("the signal did not stop the run")

    def unstopped(signum, _frame):
        raise Unstopped(signal.Signals(signum).name)

    monkeypatch.setattr(pipeline_module, "build_pipeline", lambda values, rounds=1: pipeline_signalled_mid_step)
    monkeypatch.setattr(run, "init_kfp", lambda root: None)
    monkeypatch.delenv("KFP_HOST", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # no S3 server of the run's own: none is reached
    (tmp_path / "configs").mkdir()
    previous = signal.signal(signum, unstopped)  # this process must outlive a run that leaves the signal alone
    try:
        code = run.main(["--config-dir", str(tmp_path / "configs"), "--state-dir", str(tmp_path / "state")])
        assert signal.getsignal(signum) is unstopped  # the run's handler is gone again
    finally:
        signal.signal(signum, previous)
        for process in held:
            if running(process):
                process.kill()
    out, err = capsys.readouterr()
    assert code == 128 + signum, (out, err)
    assert len(held) == 2 and not [p for p in held if running(p)]
    assert err.strip().splitlines() == [
        f"stopped by {signal.Signals(signum).name}: ended 2 process(es) the run had started (1 sh, 1 sleep); its "
        "finished steps stay cached"
    ]
    assert "failed" not in out


@pytest.mark.slow(seconds=10)  # a python process with kfp and its steps' processes: ~9 s on one idle core
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_local_run_ends_every_process_it_started(s3_server, tmp_path, signum):
    seconds = f"{300 + uuid.uuid4().int % 10**6 / 10**6:.6f}"  # a length no other sleep has: this run's
    (tmp_path / "configs").mkdir()
    argv = ["--state-dir", str(tmp_path / "state"), "--config-dir", str(tmp_path / "configs")]
    argv += ["--bucket", f"stop-{uuid.uuid4().hex[:10]}", "--run-id", "stop"]
    path = os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    runner = subprocess.Popen(  # AWS_ENDPOINT_URL: the session's S3 server, so the run starts none of its own
        [sys.executable, HOLDING, seconds, *argv],
        env=dict(os.environ, PYTHONPATH=path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        started = wait_for_steps(runner, seconds)
        runner.send_signal(signum)
        out, err = runner.communicate(timeout=30)
        left = [p for p in started + holding_sleeps(seconds) if running(p)]
        assert not left, f"left running: {left}\n{err[-3000:]}"
        assert runner.returncode == 128 + signum, (out[-2000:], err[-3000:])
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"stopped by {signal.Signals(signum).name}: ended "), err[-3000:]
        sleeps = re.search(r"\b(\d+) sleep\b", line)  # what it ended, by name (the queued step may have got that far)
        assert sleeps and int(sleeps.group(1)) >= STEPS_AT_ONCE, line
        assert "Traceback" not in err and "failed after" not in out, (out[-2000:], err[-3000:])
    finally:  # a failed check leaves no process behind
        if runner.poll() is None:
            runner.kill()
        for process in [*started, *holding_sleeps(seconds)]:
            if running(process):
                process.kill()
        runner.wait(timeout=30)


def test_end_tree_ends_children_and_grandchildren_but_spares_what_it_is_told():
    before = {(p.pid, p.started) for p in descendants(os.getpid())}  # this test process's own (a session S3 server)
    kept = subprocess.Popen(["sleep", "60"])
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 61; wait"])
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(shell.pid).children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the shell starts its two sleeps
        grandchildren = psutil.Process(shell.pid).children()
        assert len(grandchildren) == 2
        spared = before | {(p.pid, p.started) for p in descendants(os.getpid()) if p.pid == kept.pid}
        ended = end_tree(os.getpid(), spared, grace_s=3.0)
        assert sorted((p.name, p.pid) for p in ended) == sorted(
            [("sh", shell.pid)] + [("sleep", p.pid) for p in grandchildren]
        )
        assert shell.wait(timeout=5) == -signal.SIGTERM
        assert not [p for p in grandchildren if running(p)]  # end_tree returns once they are gone
        assert kept.poll() is None
    finally:
        for child in (kept, shell):
            child.kill()
            child.wait()


def test_end_tree_kills_what_ignores_sigterm_once_the_grace_is_over():
    before = {(p.pid, p.started) for p in descendants(os.getpid())}
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60; :"])  # its sleep inherits the ignored SIGTERM
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(stubborn.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        sleeping = psutil.Process(stubborn.pid).children()
        started = time.monotonic()
        ended = end_tree(os.getpid(), before, grace_s=0.5)
        assert sorted(p.name for p in ended) == ["sh", "sleep"]
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        _, left = psutil.wait_procs(sleeping, timeout=5)  # SIGKILLed: end_tree does not wait for those
        assert not left and 0.5 <= time.monotonic() - started < 5
    finally:
        stubborn.kill()
        stubborn.wait()
