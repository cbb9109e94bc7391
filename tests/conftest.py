"""Shared fixtures: a real S3 server (SeaweedFS) on loopback for the whole session, and a small
evaluation set in the benchmarks' own layouts (with real tiny images) for the evaluate tests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from clipdpo.evaluate import amber
from clipdpo.storage import Storage, join

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Several workers (pytest-xdist, `make test` runs `-n 2`): each worker's torch, and every process it starts
# (kfp components, torchrun ranks), gets its share of the cores. Two torch threads per process with the other
# core busy trained ~10x slower than one (measured on these 2-core machines, 2026-11-29). Set before anything
# imports torch.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // WORKERS)))


# The schedule on several workers. `make test` runs `-n 2 --dist loadgroup --no-loadscope-reorder`: xdist hands out
# work units, a test or all the tests of one xdist_group, in collection order, a unit or two ahead per worker. Below,
# the collection is reordered, longest unit first, so that no worker is left running a 5-minute test at the end
# while the other idles (longest-processing-time-first; the short tests fill the gaps at the end).
SLOW_S = 10.0  # a slow test whose mark names no `seconds`
FAST_S = 0.5  # a test not marked slow


def expected_seconds(item: pytest.Item) -> float:
    """The test's time on one idle core: `@pytest.mark.slow(seconds=...)` where a test says, for ordering only."""
    mark = item.get_closest_marker("slow")
    return FAST_S if mark is None else float(mark.kwargs.get("seconds", SLOW_S))


def work_unit(item: pytest.Item) -> str:
    """The unit the test is scheduled in: its xdist_group; a test that uses a module-scoped fixture (a tiny model
    built, a training run) is put in its module's group, so the fixture is made once, not once per worker."""
    groups = [
        mark.args[0] if mark.args else mark.kwargs.get("name", "default") for mark in item.iter_markers("xdist_group")
    ]
    if groups:
        return "_".join(sorted(set(map(str, groups))))  # as xdist names a unit of several groups
    # _fixtureinfo: pytest's record of the fixtures the test requests, and all they request (the last def is in use)
    if any(defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values() if defs):
        module = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(module))
        return module
    return item.nodeid


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run keeps the files' order
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(work_unit(item), []).append(item)
    cost = {name: sum(map(expected_seconds, members)) for name, members in units.items()}
    items[:] = [item for name in sorted(units, key=lambda name: -cost[name]) for item in units[name]]


@pytest.fixture(autouse=True)
def no_log_handlers_on_closed_streams():
    """A stage run in-process (clipdpo.stage.setup_logging) binds a root handler to the stderr pytest gave that
    test, closed after it; a later test in the same worker would find '--- Logging error ---' in its stderr."""
    import logging

    for handler in list(logging.root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            logging.root.removeHandler(handler)


@pytest.fixture(autouse=True)
def image_tags_restored():
    """A local run in-process (pipelines.run.local_content_tags) sets CLIPDPO_IMAGE_TAGS in this worker's
    environment for the kfp steps it starts; a later test in the same worker that compiles the pipeline in a
    child process would inherit the content tags instead of the CLIPDPO_IMAGE_TAG it sets."""
    saved = os.environ.get("CLIPDPO_IMAGE_TAGS")
    yield
    if saved is None:
        os.environ.pop("CLIPDPO_IMAGE_TAGS", None)
    else:
        os.environ["CLIPDPO_IMAGE_TAGS"] = saved


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """A command line run in-process (s3server's main installs SIGTERM/SIGHUP handlers) leaves the worker's
    handlers as they were for the next test."""
    import signal

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session", autouse=True)
def train_scratch(tmp_path_factory):
    """Training's node-local scratch (checkpoint.scratch_dir: a folder per output URI, default under /tmp) in
    this session's (this worker's) temporary folder: two runs of one test at a time, in two workers or two
    checkouts, train to the same URI (`s3://clipdpo-local/runs/rerun/model` on servers of their own) and
    would share one folder; and /tmp keeps none of them."""
    saved = os.environ.get("CLIPDPO_SCRATCH")
    os.environ["CLIPDPO_SCRATCH"] = str(tmp_path_factory.mktemp("scratch"))
    yield
    if saved is None:
        os.environ.pop("CLIPDPO_SCRATCH", None)
    else:
        os.environ["CLIPDPO_SCRATCH"] = saved


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from clipdpo import s3server

    server = s3server.start(str(tmp_path_factory.mktemp("seaweedfs")))
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    os.environ["CLIPDPO_S3_MAX_ATTEMPTS"] = "2"
    yield server
    server.stop(grace_s=0)  # its data folder is a temporary one: no need to wait for weed's shutdown
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket URI per test."""
    from clipdpo.storage import Storage

    uri = f"s3://t-{uuid.uuid4().hex[:12]}"
    Storage().ensure_bucket(uri + "/x")
    return uri


# AMBER: official data/ layout (annotations, relation words, safe words, counters) + query file + image/.
# Every expected value of tests/clipdpo/test_amber.py is worked out by hand from these.
AMBER_RELATION = {
    "dog": ["puppy"],
    "cat": ["kitten"],
    "car": ["vehicle"],
    "tree": [],
    "frisbee": [],
    "grass": ["lawn"],
    "man": ["person"],
    "sky": [],
}  # sky: in the vocabulary and a global safe word
AMBER_ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "frisbee"]},
    {"id": 2, "type": "generative", "truth": ["car", "tree"], "hallu": ["man"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 4, "type": "discriminative-hallucination", "truth": "yes"},
    {"id": 5, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 6, "type": "discriminative-attribute-number", "truth": "yes"},
    {"id": 7, "type": "discriminative-attribute-action", "truth": "no"},
    {"id": 8, "type": "discriminative-relation", "truth": "yes"},
    {"id": 9, "type": "discriminative-relation", "truth": "no"},
]
AMBER_QUERIES = [
    {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
    {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
] + [{"id": i, "image": f"AMBER_{(i % 2) + 1}.jpg", "query": "Is there a dog in this image?"} for i in range(3, 10)]
METRICS_TXT = amber.start_counters_text()
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def jpeg(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_amber(storage: Storage, root: str) -> str:
    """AMBER's layout under `root`: data/ (metadata + query/) and image/; returns the data/ URI."""
    data = join(root, "data")
    storage.write_bytes(join(data, "annotations.json"), json.dumps(AMBER_ANNOTATIONS).encode())
    storage.write_bytes(join(data, "relation.json"), json.dumps(AMBER_RELATION).encode())
    storage.write_bytes(join(data, "safe_words.txt"), b"sky\nday\n")
    storage.write_bytes(join(data, "metrics.txt"), METRICS_TXT.encode())
    storage.write_bytes(join(data, "query", "query_all.json"), json.dumps(AMBER_QUERIES).encode())
    storage.write_bytes(join(root, "image", "AMBER_1.jpg"), jpeg(COLOURS["green"]))
    storage.write_bytes(join(root, "image", "AMBER_2.jpg"), jpeg(COLOURS["blue"]))
    return data


def write_zero_shot(storage: Storage, root: str, per_class: int = 3) -> str:
    """Image folder per class (red / blue / green squares), plus classes.json naming them."""
    for name, colour in COLOURS.items():
        for index in range(per_class):
            shade = tuple(max(0, c - 15 * index) for c in colour)
            storage.write_bytes(join(root, f"c_{name}", f"{index}.jpg"), jpeg(shade))
    storage.write_bytes(join(root, "classes.json"), json.dumps({f"c_{n}": f"{n} square" for n in COLOURS}).encode())
    return root


def write_suite(storage: Storage, root: str) -> dict[str, str]:
    """POPE and ScienceQA question files in clipdpo's benchmark layout; returns kind -> root."""
    for name, colour in COLOURS.items():
        storage.write_bytes(join(root, "images", f"{name}.jpg"), jpeg(colour))
    pope = [
        {
            "id": i,
            "image": f"{c}.jpg",
            "question": f"Is there a {c} square in the image?",
            "answer": "yes" if i % 2 else "no",
            "category": "random" if i < 4 else "popular",
        }
        for i, c in enumerate(["red", "blue", "green", "red", "blue", "green"])
    ]
    sqa = [
        {
            "id": f"q{i}",
            "image": f"{c}.jpg",
            "question": "Which colour is the square?",
            "choices": ["red", "blue", "green"],
            "answer": i % 3,
            "hint": "A square is shown.",
        }
        for i, c in enumerate(["red", "blue", "green"])
    ]
    out = {}
    for kind, rows in (("pope", pope), ("scienceqa", sqa)):
        storage.write_bytes(join(root, kind, "questions.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode())
        out[kind] = join(root, kind)
    return out


@pytest.fixture(scope="session")
def eval_set() -> SimpleNamespace:
    """The hand-made evaluation set above: its AMBER tables and writers of each layout."""
    return SimpleNamespace(
        amber_relation=AMBER_RELATION,
        amber_annotations=AMBER_ANNOTATIONS,
        amber_queries=AMBER_QUERIES,
        metrics_txt=METRICS_TXT,
        jpeg=jpeg,
        write_amber=write_amber,
        write_zero_shot=write_zero_shot,
        write_suite=write_suite,
    )


@pytest.fixture(scope="session")
def reported_run(tmp_path_factory) -> SimpleNamespace:
    """report_fixture's finished run with its report written once (rendering the figures takes seconds);
    `root` and `written` (report.write's result). Tests only read it."""
    import report_fixture

    from clipdpo.report import build as report

    root = report_fixture.write_run(str(tmp_path_factory.mktemp("reported") / "run"))
    return SimpleNamespace(root=root, written=report.write(root, Storage()))


@pytest.fixture(scope="session")
def spacy_model() -> str:
    """The spaCy model the tests use: `make test` fetches en_core_web_md and names it here."""
    from clipdpo.evaluate.nlp import local_spacy_model

    return local_spacy_model()


@pytest.fixture(scope="session")
def spacy_nlp(spacy_model):
    """AMBER's spaCy NLP over that model, loaded once for the session (loading takes seconds); stateless
    apart from a cache of word docs, so tests can share it."""
    from clipdpo.evaluate.nlp import SpacyNLP

    return SpacyNLP(spacy_model)


def compile_pipeline(path: str, *args: str, **env) -> tuple[dict, dict]:
    """`python -m pipelines.compile path [args]` with `env` added (the settings read it at import, hence a process
    of its own); the pipeline spec and the platform spec it wrote."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "pipelines.compile", path, *args],
        cwd=root,
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )
    spec, platform = yaml.safe_load_all(open(path))
    return spec, platform


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> tuple[dict, dict, str]:
    """The pipeline compiled once for the session with the default settings: (spec, platform, path)."""
    path = str(tmp_path_factory.mktemp("kfp") / "clipdpo.yaml")
    return (*compile_pipeline(path), path)


@pytest.fixture(scope="session")
def compile_to():
    """compile_pipeline, for tests that compile with other settings."""
    return compile_pipeline
