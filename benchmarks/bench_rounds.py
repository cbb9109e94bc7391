"""make bench (rounds part): a local run of several rounds, end to end, through kfp's local runner with the product's
command line (`python -m pipelines.run`) on the demo (tiny models from configs, the 10 built-in images). Checks:

1. `--rounds N` (default 3), then `--rounds N+1` on the same state: the second run runs round N+1 and the steps after
   the rounds only; its summary shows every step of rounds 1..N cached, and each of those rounds all cached.
2. On a state of its own, `--rounds 2` stopped by SIGTERM inside round 2's training (once a checkpoint of it is on
   S3), then run again: every step the stopped run had finished is served from kfp's cache, round 2's training
   resumes from its checkpoint, and round 2's model is byte for byte the one the uninterrupted run of 1. trained
   (the same configs, the same models: only the bucket differs).

Every round passes (`gate.rules=[]`: the tiny random models' rounds would otherwise stop where one is worse than the
one before); training checkpoints each step (`train.save_steps=1`). Prints each run's summary; per-round wall
times of the first run (all rounds run) and of the rerun -> bench-results/rounds.json. Minutes: a demo round is
about twenty steps, each a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipdpo import s3server
from clipdpo.storage import Storage, join

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "rounds"
OVERRIDES = ["gate.rules=[]", "train.save_steps=1"]
HEADER = re.compile(r"^step\s+round\s+cached\s+rows\s+seconds$", re.M)
ROUND_HEADER = re.compile(r"^round\s+steps\s+cached\s+wall s$", re.M)
STOP_TIMEOUT_S = 3600.0
NEVER_CACHED = ("cleanup-train-jobs", "gate")  # each run runs them again (caching off: pipelines/clipdpo_pipeline.py)


def command(work: Path, state: str, bucket: str, rounds: int) -> list[str]:
    argv = [sys.executable, "-m", "pipelines.run", "--run-id", RUN_ID, "--bucket", bucket, "--rounds", str(rounds)]
    argv += ["--state-dir", str(work / state), "--config-dir", str(work / "configs"), "--shards", "2"]
    return argv + [arg for item in OVERRIDES for arg in ("--set", item)]


def environment(server: s3server.S3Server) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **server.env, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(argv: list[str], env: dict[str, str]) -> tuple[str, float]:
    """A local run to its end: (its stdout, seconds); a failed run ends the bench."""
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    print(done.stdout[-6000:], flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:])}: exit {done.returncode}\n{done.stderr[-4000:]}")
    return done.stdout, time.monotonic() - started


def table(out: str, header: re.Pattern) -> list[list[str]]:
    """The cells of the last table under `header` in a run's output, up to its first blank line."""
    lines = out[list(header.finditer(out))[-1].end() :].strip().splitlines()
    blank = next((at for at, line in enumerate(lines) if not line.strip()), len(lines))
    return [line.split() for line in lines[:blank]]


def summary_steps(out: str) -> dict[str, tuple[str, bool]]:
    """The run summary's step table: {step: (its round, "–" for none; cached)}."""
    return {cells[0]: (cells[1], cells[2] == "yes") for cells in table(out, HEADER)}


def summary_rounds(out: str) -> list[dict]:
    """The run summary's round table: [{round, steps, cached, wall_s}]."""
    return [
        {"round": index, "steps": int(steps), "cached": int(cached), "wall_s": None if wall == "–" else float(wall)}
        for index, steps, cached, wall in table(out, ROUND_HEADER)
    ]


def check_one_more_round(out: str, rounds: int) -> list[dict]:
    """The rerun with one round more: rounds 1..`rounds` all cached, the new round run."""
    steps, rounds_table = summary_steps(out), summary_rounds(out)
    before = {name for name, (index, _) in steps.items() if index.isdigit() and int(index) <= rounds}
    new = {name for name, (index, _) in steps.items() if index == str(rounds + 1)}
    not_cached = sorted(name for name in before if not steps[name][1])
    if not before or not new or not_cached or any(steps[name][1] for name in new):
        raise SystemExit(f"--rounds {rounds + 1} after {rounds}: not cached {not_cached}, round {rounds + 1}: {new}")
    earlier = [row for row in rounds_table if row["round"].isdigit() and int(row["round"]) <= rounds]
    if len(earlier) != rounds or any(row["cached"] != row["steps"] for row in earlier):
        raise SystemExit(f"round table: rounds 1-{rounds} not each all cached: {rounds_table}")
    return rounds_table


def stop_in_round_two_training(argv: list[str], env: dict[str, str], bucket: str) -> int:
    """Start the run; SIGTERM it once round 2's training has a checkpoint on S3. Its exit code."""
    model = join(f"s3://{bucket}/runs/{RUN_ID}", "round-2", "model")
    log = open(Path(argv[argv.index("--state-dir") + 1]).with_suffix(".out"), "w")  # beside the state
    runner = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    storage, deadline = Storage(), time.monotonic() + STOP_TIMEOUT_S
    try:
        while runner.poll() is None and time.monotonic() < deadline:
            if any(uri.endswith("/COMPLETE") for uri in storage.list(join(model, "checkpoints"))):
                runner.send_signal(signal.SIGTERM)
                break
            time.sleep(0.2)
        code = runner.wait(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
        log.close()
    if storage.exists(join(model, "train_summary.json")):
        raise SystemExit("round 2's training ended before the stop: give it more steps (train.epochs)")
    return code


def finished_steps(state: Path) -> set[str]:
    """The steps the newest kfp run folder in `state` finished (a task folder's last part)."""
    runs = sorted(p for p in (state / "kfp").iterdir() if p.name.startswith("clipdpo-"))
    return {path.parent.name for path in runs[-1].rglob("executor_output.json")}


def check_resumed(out: str, stopped_steps: set[str], log_dir: Path) -> int:
    """The rerun after the stop: the finished steps cached, round 2's training run and resumed; the step it
    resumed from."""
    steps = {re.sub(r"\[\d+\]$", "", name): cached for name, (_, cached) in summary_steps(out).items()}
    redone = sorted(n for n in stopped_steps if not steps.get(n, False) and not n.startswith(NEVER_CACHED))
    if redone or steps.get("train-2", True):
        raise SystemExit(f"after the stop: steps finished before but run again {redone}; train-2 cached: {steps}")
    logs = sorted(log_dir.glob(f"{RUN_ID}-*.log"))
    resumed = re.findall(r"resumed from \S+/round-2/model/checkpoints/step-\d+ \(step (\d+)\)", logs[-1].read_text())
    if len(resumed) != 1 or int(resumed[0]) < 1:
        raise SystemExit(f"round 2's training did not resume from a checkpoint: {resumed}")
    return int(resumed[0])


def same_model(storage: Storage, first: str, second: str) -> bool:
    """The two train outputs' model files hold the same bytes (the safetensors, config and tokenizer files)."""
    names = {uri[len(first) :] for uri in storage.list(join(first, "model"))}
    theirs = {uri[len(second) :] for uri in storage.list(join(second, "model"))}
    return names == theirs and all(
        storage.read_bytes(first + name) == storage.read_bytes(second + name) for name in sorted(names)
    )


def stopped_run(work: Path, env: dict[str, str], reference: str) -> dict:
    """Check 2: `--rounds 2` stopped inside round 2's training, run again, compared with `reference`."""
    argv = command(work, "stopped", "rounds-stopped", 2)
    code = stop_in_round_two_training(argv, env, "rounds-stopped")
    if code != 128 + signal.SIGTERM:
        raise SystemExit(f"the stopped run exited {code}, not {128 + signal.SIGTERM}")
    finished = finished_steps(work / "stopped")
    out, seconds = run(argv, env)
    step = check_resumed(out, finished, work / "stopped" / "logs")
    model = join(f"s3://rounds-stopped/runs/{RUN_ID}", "round-2", "model")
    if not same_model(Storage(), model, reference):
        raise SystemExit(f"{model} differs from the uninterrupted run's {reference}")
    return {"finished_before_stop": len(finished), "resumed_from_step": step, "rerun_s": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the first run (then one more)")
    args = parser.parse_args()
    from clipdpo.demo.configs import write_demo_configs

    work = Path(tempfile.mkdtemp(prefix="clipdpo-bench-rounds-"))
    write_demo_configs(work / "configs", work / "models")  # one set of models for every run
    server = s3server.start(str(work / "s3"))
    try:
        os.environ.update(server.env)
        env = environment(server)
        out, first_s = run(command(work, "state", "rounds", args.rounds), env)
        first = summary_rounds(out)
        out, more_s = run(command(work, "state", "rounds", args.rounds + 1), env)
        more = check_one_more_round(out, args.rounds)
        stopped = stopped_run(work, env, join(f"s3://rounds/runs/{RUN_ID}", "round-2", "model"))
    finally:
        server.stop()
    result = {
        "rounds": args.rounds,
        "first_run": {"seconds": round(first_s, 1), "per_round": first},
        "one_more_round": {"seconds": round(more_s, 1), "per_round": more},
        "stopped_in_round_2_training": stopped,
        "cpu": cpu_model(),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench-results").mkdir(exist_ok=True)
    (ROOT / "bench-results" / "rounds.json").write_text(json.dumps(result, indent=2))
    return 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
