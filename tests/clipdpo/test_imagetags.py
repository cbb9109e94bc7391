"""Stage image tags by content: a change reaches exactly the images that can run it, found from
the import graph (not from file paths), Dockerfiles and the stage's dependency pins."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from clipdpo.cluster import imagetags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def repo(tmp_path):
    """A copy of what the tags read: src/, Dockerfiles/, locks/, pipelines/*.py, pyproject.toml."""
    shutil.copytree(
        os.path.join(ROOT, "src", "clipdpo"), tmp_path / "src" / "clipdpo", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(os.path.join(ROOT, "Dockerfiles"), tmp_path / "Dockerfiles")
    shutil.copytree(os.path.join(ROOT, "locks"), tmp_path / "locks")
    (tmp_path / "pipelines").mkdir()
    for name in os.listdir(os.path.join(ROOT, "pipelines")):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, "pipelines", name), tmp_path / "pipelines" / name)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    return tmp_path


def tags(root) -> dict[str, str]:
    return {stage: imagetags.stage_tag(str(root), stage) for stage in imagetags.STAGES}


def touch(path, text="\n# changed\n"):
    with open(path, "a") as handle:
        handle.write(text)


@pytest.fixture(scope="module")
def repo_tags() -> dict[str, str]:
    """This checkout's tags, hashed once for the module (each hashing walks the import graph per stage)."""
    return tags(ROOT)


def changed(before: dict, after: dict) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


def test_an_ingest_only_change_leaves_the_generate_tag_alone(repo):
    before = tags(repo)
    touch(repo / "src" / "clipdpo" / "ingest" / "sources.py")
    assert changed(before, tags(repo)) == {"filter"}  # the ingest step runs in the filter image


@pytest.mark.slow  # hashes a copy of the repository several times
def test_a_module_the_generate_stage_imports_changes_its_tag(repo):
    before = tags(repo)
    touch(repo / "src" / "clipdpo" / "generate" / "__main__.py")  # the generate image's entry point only
    assert changed(before, tags(repo)) == {"generate"}
    before = tags(repo)
    # the filter image runs POVID's pairs where no GPU is needed (pipelines' povid_pairs_cpu), and
    # clipdpo.generate.povid_source brings the generate package with it
    touch(repo / "src" / "clipdpo" / "generate" / "qa_parse.py")
    assert changed(before, tags(repo)) == {"generate", "filter"}
    before = tags(repo)
    touch(repo / "src" / "clipdpo" / "storage.py")  # every stage reads and writes S3
    assert changed(before, tags(repo)) == set(imagetags.STAGES)


@pytest.mark.slow  # hashes a copy of the repository several times
def test_the_graph_follows_lazy_imports_and_ignores_files_nobody_imports(repo):
    generate = repo / "src" / "clipdpo" / "generate"
    (generate / "unused.py").write_text("X = 1\n")
    (generate / "helper.py").write_text("Y = 1\n")
    before = tags(repo)
    touch(generate / "unused.py")  # in the generate folder, imported by nothing: a path regex would rebuild
    assert changed(before, tags(repo)) == set()
    touch(generate / "shard.py", "\n\ndef _later():\n    from clipdpo.generate import helper\n    return helper.Y\n")
    before = tags(repo)
    touch(generate / "helper.py")  # imported only inside a function (of the generate package, which the
    assert changed(before, tags(repo)) == {"generate", "filter"}  # filter image imports for POVID's CPU branch)


@pytest.mark.slow  # hashes a copy of the repository several times
def test_dockerfiles_lockfiles_and_base_digests_reach_only_their_stages(repo):
    before = tags(repo)
    touch(repo / "Dockerfiles" / "train.Dockerfile")
    assert changed(before, tags(repo)) == {"train"}
    before = tags(repo)
    touch(repo / "locks" / "generate.txt")  # a package of the generate image moved
    assert changed(before, tags(repo)) == {"generate"}
    before = tags(repo)
    touch(repo / "locks" / "spacy-model.txt")  # the spaCy model of AMBER and of the noun-level judge
    assert changed(before, tags(repo)) == {"evaluate", "score"}
    pyproject = repo / "pyproject.toml"
    before = tags(repo)
    pyproject.write_text(pyproject.read_text().replace('"pytest==9.1.1"', '"pytest==9.1.2"'))
    assert changed(before, tags(repo)) == set()  # pins reach an image through its lockfile only
    score = repo / "Dockerfiles" / "score.Dockerfile"
    text = score.read_text()
    digest = re.search(r"@sha256:([0-9a-f]{64})", text).group(1)
    before = tags(repo)
    score.write_text(text.replace(digest, "0" * 64))  # the same tag, another base image
    assert changed(before, tags(repo)) == {"score"}
    assert imagetags.stage_inputs(str(repo), "score")["bases"] == [f"python:3.11.14-slim-bookworm@sha256:{'0' * 64}"]
    score.write_text(re.sub(r"@sha256:[0-9a-f]{64}", "", text))
    with pytest.raises(ValueError, match="not pinned by digest"):
        imagetags.stage_tag(str(repo), "score")


def test_what_goes_into_each_tag(repo_tags):
    sources = {stage: set(imagetags.stage_inputs(ROOT, stage)["sources"]) for stage in imagetags.STAGES}
    assert "clipdpo/generate/__main__.py" in sources["generate"] and "clipdpo/ingest/__main__.py" in sources["filter"]
    assert not any(path.startswith("clipdpo/ingest/") for path in sources["generate"])
    assert "clipdpo/cluster/launch.py" in sources["train"]  # steps.train_step's lazy import
    assert not any(path.startswith("clipdpo/cluster/") for path in sources["generate"] | sources["score"])
    locks = {stage: set(imagetags.stage_inputs(ROOT, stage)["locks"]) for stage in imagetags.STAGES}
    assert locks == {
        "filter": {"locks/filter.txt"},
        "score": {"locks/score.txt", "locks/spacy-model.txt"},
        "train": {"locks/train.txt"},
        "generate": {"locks/generate.txt"},
        "evaluate": {"locks/evaluate.txt", "locks/spacy-model.txt"},
    }
    from clipdpo import __version__

    prefix = f"{__version__}-"
    assert all(tag.startswith(prefix) and len(tag) == len(prefix) + 12 for tag in repo_tags.values())


def test_cli_prints_the_tags_and_the_pipeline_uses_them(repo_tags):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    out = subprocess.run(
        [sys.executable, "-m", "clipdpo.cluster.imagetags", "--root", ROOT, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    printed = json.loads(out)
    assert printed == repo_tags
    from pipelines.settings import PipelineSettings

    settings = PipelineSettings(registry="r.example.com/ml", stage_tags=printed)
    assert settings.image("train") == f"r.example.com/ml/clipdpo-train:{printed['train']}"
    with pytest.raises(ValueError, match="must pin"):
        PipelineSettings(stage_tags={"train": "latest"}).image("train")


# The only dynamic imports, and why no tag needs them: the stages' config classes are resolved by name for the
# submit-time check in the submitting process (each step imports its own config statically), and POVID's plugin
# rewriter is the user's code, not the image's.
DYNAMIC_IMPORTS = ["src/clipdpo/generate/povid_source.py", "src/clipdpo/stages.py"]


def test_no_dynamic_import_escapes_the_graph():
    """An import the graph cannot see would let a change slip past the tags: there is none beyond the listed
    ones (each pipeline step imports its stage package by name)."""
    import ast

    dynamic = []
    for folder, _, names in os.walk(os.path.join(ROOT, "src", "clipdpo")):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                callee = isinstance(node, ast.Call) and (getattr(node.func, "attr", "") or getattr(node.func, "id", ""))
                if callee in ("import_module", "__import__"):
                    dynamic.append(os.path.relpath(path, ROOT))
    assert sorted(dynamic) == DYNAMIC_IMPORTS, dynamic
