"""The example CI (.github/workflows): it submits a retraining and returns (a hosted runner stops a job after
6 h, training runs for days), a scheduled job reads the gate decision once the run ends, the KFP token is
passed to every step that talks to KFP, and one retraining runs at a time per branch."""

from __future__ import annotations

import os
import subprocess

import yaml

from clipdpo.cluster.kfpclient import RunView

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = os.path.join(ROOT, ".github", "workflows")


def workflow(name: str) -> dict:
    return yaml.safe_load(open(os.path.join(WORKFLOWS, name)))


def step(job: dict, contains: str) -> dict:
    return next(s for s in job["steps"] if contains in s.get("run", "") or contains in s.get("name", ""))


def run_step(script: str, env: dict) -> dict[str, str]:
    """Run a step's bash script as Actions does, and read what it wrote to GITHUB_OUTPUT."""
    out = os.path.join(env["TMP"], "github_output")
    open(out, "w").close()
    subprocess.run(
        ["bash", "-e", "-c", script], env={"PATH": os.environ["PATH"], **env, "GITHUB_OUTPUT": out}, check=True
    )
    return dict(line.split("=", 1) for line in open(out).read().splitlines())


def test_retrain_submits_and_returns_with_the_token_one_per_branch():
    retrain = workflow("retrain.yml")
    assert retrain["concurrency"] == {"group": "retrain-${{ github.ref }}", "cancel-in-progress": False}
    job = retrain["jobs"]["retrain"]
    assert job["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}" and job["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    for each in retrain["jobs"].values():  # nothing waits for the run (the old job waited 96 h on a 6 h runner)
        for s in each["steps"]:
            assert float(s.get("env", {}).get("CLIPDPO_WAIT_HOURS", 0)) == 0, s
            assert "clipdpo.gate" not in s.get("run", "")  # the decision is read by retrain-gate.yml
    names = [s.get("run", "") for s in job["steps"]]
    guard = next(i for i, r in enumerate(names) if "kfpclient guard" in r)
    submit = next(i for i, r in enumerate(names) if "make pipeline-run" in r)
    assert guard < submit
    assert '--prefix "${{ steps.names.outputs.prefix }}"' in names[guard]
    assert "RUN_ID=${{ steps.names.outputs.run_id }}" in names[submit]


def test_the_gate_job_finds_the_run_retrain_submitted(tmp_path):
    """The names retrain.yml gives a branch's run and the prefix retrain-gate.yml looks for agree, for a
    branch name with characters a run name cannot hold."""
    names = step(workflow("retrain.yml")["jobs"]["retrain"], "Run names of this branch")
    submitted = run_step(names["run"], {"TMP": str(tmp_path), "GITHUB_REF_NAME": "Feature/Rules_2", "SUFFIX": "41"})
    assert submitted == {"prefix": "clipdpo-ci-feature-rules-2-", "run_id": "ci-feature-rules-2-41"}
    kfp_run = RunView("k41", f"clipdpo-{submitted['run_id']}", "SUCCEEDED")  # pipelines/run.py: clipdpo-<run id>
    assert kfp_run.name.startswith(submitted["prefix"]) and kfp_run.clipdpo_run_id == submitted["run_id"]

    gate = workflow("retrain-gate.yml")
    assert gate[True]["schedule"] and "workflow_dispatch" in gate[True]  # YAML 1.1 reads the key `on` as True
    job = gate["jobs"]["gate"]
    assert job["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
    latest = step(job, "kfpclient latest")
    script = latest["run"].replace("PYTHONPATH=src .venv/bin/python -m clipdpo.cluster.kfpclient", "echo")
    printed = subprocess.run(
        ["bash", "-e", "-c", script],
        env={"PATH": os.environ["PATH"], "BRANCH": "Feature/Rules_2", "GITHUB_OUTPUT": str(tmp_path / "o")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"--prefix {submitted['prefix']}" in printed
    reads = step(job, "clipdpo.gate")
    assert reads["if"].startswith("steps.run.outputs.ended == 'true'")
    assert reads["env"]["RUN_ID"] == "${{ steps.run.outputs.run_id }}"
    assert "/runs/$RUN_ID/gate/decision.json" in reads["run"] and 'test "$RUN_STATE" = SUCCEEDED' in reads["run"]


def test_image_builds_read_and_write_a_registry_layer_cache(tmp_path):
    """CI builds each stage image with a registry layer cache (a builder that exports it first); the Makefile
    turns IMAGE_CACHE into the cache flags, run here against a docker stand-in that records its commands."""
    job = workflow("retrain.yml")["jobs"]["images"]
    uses = [s.get("uses", "") for s in job["steps"]]
    build = next(i for i, s in enumerate(job["steps"]) if "make images push" in s.get("run", ""))
    buildx = next(i for i, u in enumerate(uses) if u.startswith("docker/setup-buildx-action@"))
    assert buildx < build and "IMAGE_CACHE=$REGISTRY" in job["steps"][build]["run"]

    log = tmp_path / "docker.log"
    (tmp_path / "docker").write_text('#!/bin/sh\necho "$*" >> "$DOCKER_LOG"\n')
    (tmp_path / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "DOCKER_LOG": str(log)}

    def commands(*options: str) -> list[str]:
        log.write_text("")
        make = ["make", "-s", "-C", ROOT, "images", "IMAGE_STAGES=train score", "REGISTRY=r.example", "TAG=t1"]
        subprocess.run(make + list(options), env=env, check=True, capture_output=True)
        return [line for line in log.read_text().splitlines() if "Dockerfiles/" in line]

    cached = commands("IMAGE_CACHE=cache.example/ml")
    assert len(cached) == 2
    for stage, line in zip(("train", "score"), cached):
        ref = f"type=registry,ref=cache.example/ml/clipdpo-{stage}:buildcache"
        assert line.startswith("buildx build --load") and f"--cache-from {ref} " in line
        assert f"--cache-to {ref},mode=max," in line and f"-t r.example/clipdpo-{stage}:t1" in line
    assert all(line.startswith("build -f") and "cache" not in line for line in commands())  # locally: no cache
