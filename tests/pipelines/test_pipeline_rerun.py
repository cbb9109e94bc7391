"""The local kfp run after a config change and after its S3 data was deleted, and its
short terminal output: `python -m pipelines.run` as a user runs it, with its own loopback S3 server under
<state-dir>/s3, on the built-in demo (one shard, AMBER only, to keep it short)."""

from __future__ import annotations

import contextlib
import re
import shutil

import pytest

S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
EARLY = ("ingest", "generate-shard[0]", "generate-finalize", "score-shard[0]", "score-finalize")
LATE = ("filter-pairs", "train", "plan-evaluation", "evaluate-task[0]", "evaluate-task[1]", "evaluate-merge", "report")


@contextlib.contextmanager
def serving(state, monkeypatch):
    """The run's S3 data served again (the runner stops its server when it ends), to read the artifacts."""
    from clipdpo import s3server
    from clipdpo.storage import Storage

    server = s3server.start(str(state / "s3"))
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield Storage()
    finally:
        server.stop()


def run(argv, monkeypatch, capsys) -> str:
    """One local run as `make pipeline-run` starts it: no S3 endpoint set, so the runner serves <state>/s3."""
    from pipelines.run import main

    for key in ("CLIPDPO_WORLD", "CLIPDPO_CONTROL", "KFP_HOST"):  # the demo, locally
        monkeypatch.delenv(key, raising=False)
    for key in S3_KEYS:  # set then delete: monkeypatch restores what this test's runs leave behind
        monkeypatch.setenv(key, "-")
        monkeypatch.delenv(key)
    assert main(argv) == 0
    return capsys.readouterr().out


def cached_column(out: str) -> dict[str, str]:
    """step -> yes/no from the run's closing summary."""
    header = list(re.finditer(r"^step\s+cached\s+rows\s+seconds$", out, re.M))[-1]
    rows = out[header.end() :].split("\n\n", 1)[0].strip().splitlines()
    return {line.split()[0]: line.split()[1] for line in rows}


def expected_pairs(pairs) -> tuple[float, int]:
    """A margin that keeps some caption pairs of the first run and drops others, and the pairs it leaves: each
    image's pair is its widest qualifying margin, so exactly the caption pairs above the new margin stay
    (QA pairs do not depend on it)."""
    table = [row for _, shard in pairs.iter_shards() for row in shard.to_pylist()]
    margins = sorted((row["margin"] for row in table if row["kind"] == "caption"), reverse=True)
    qa = sum(row["kind"] == "qa" for row in table)
    # the widest gap between the 4th and the last margin (training needs 4 pairs: the demo's global batch)
    k = max(range(3, len(margins) - 1), key=lambda i: margins[i] - margins[i + 1])
    assert margins[k] - margins[k + 1] > 1e-3, margins  # a gap float32 margins cannot blur
    return (margins[k] + margins[k + 1]) / 2, k + 1 + qa


@pytest.mark.slow(seconds=240)  # four demo runs; seconds: for the xdist order (tests/conftest.py)
def test_changed_filter_reruns_filter_and_later_steps_only_and_deleted_data_reruns_everything(
    tmp_path, monkeypatch, capsys
):
    from clipdpo.artifacts import Artifact
    from clipdpo.storage import join

    state = tmp_path / "state"
    root = "s3://clipdpo-local/runs/rerun"
    argv = [
        "--run-id",
        "rerun",
        "--state-dir",
        str(state),
        "--shards",
        "1",
        "--set",
        "evaluate.zero_shot=null",
        "--set",
        "evaluate.suite=[]",
    ]
    first = run(argv, monkeypatch, capsys)
    assert set(cached_column(first).values()) == {"no"}
    # short output: one line per step as it ends, the gate's table, where things are, the summary
    lines = first.splitlines()
    assert len(lines) <= 90, first
    assert "Executing task" not in first and "executor_input" not in first and "Streamed logs" not in first
    steps = [line for line in lines if re.match(r"^  \S+\s+(run|cached)\s+\S+ rows\s+\S+ s$", line)]
    assert len(steps) == len(cached_column(first)), steps
    with serving(state, monkeypatch) as storage:
        pairs = Artifact.open(storage, join(root, "pairs"), kind="pairs")
        margin, count = expected_pairs(pairs)
        first_model = storage.read_bytes(join(root, "model", "train_summary.json"))
    assert pairs.manifest.rows != count

    # item 8: a new filter margin reruns filter and every step after it, and only those
    second = run([*argv, "--set", f"filter.pair_min_margin={margin}"], monkeypatch, capsys)
    cached = cached_column(second)
    assert [cached[step] for step in EARLY] == ["yes"] * len(EARLY), second
    assert [cached[step] for step in LATE] == ["no"] * len(LATE), second
    with serving(state, monkeypatch) as storage:
        assert Artifact.open(storage, join(root, "pairs"), kind="pairs").manifest.rows == count
        assert storage.read_bytes(join(root, "model", "train_summary.json")) != first_model  # trained again

    # a finished artifact damaged: a scores shard deleted, a byte of a pairs shard flipped (another ETag); the
    # cache check finds both, score and filter redo exactly those shards, and every other step stays cached
    # (the repaired artifacts keep their versions) but training-pairs, whose output names the pairs, and the
    # gate and the exit task, never cached. Before: every step cached, the damage left in place.
    with serving(state, monkeypatch) as storage:
        scores = Artifact.open(storage, join(root, "scores"), kind="scores")
        storage.delete(scores.shard_uri(scores.shard_names[0]))
        pairs = Artifact.open(storage, join(root, "pairs"), kind="pairs")
        flipped = bytearray(storage.read_bytes(pairs.shard_uri(pairs.shard_names[0])))
        flipped[len(flipped) // 2] ^= 0x01
        storage.write_bytes(pairs.shard_uri(pairs.shard_names[0]), bytes(flipped))
    repaired = run([*argv, "--set", f"filter.pair_min_margin={margin}"], monkeypatch, capsys)
    cached = cached_column(repaired)
    assert {step for step, hit in cached.items() if hit == "no"} == {
        "score-shard[0]",
        "score-finalize",
        "filter-pairs",
        "training-pairs",
        "gate",
        "cleanup-train-jobs",
    }, repaired
    assert "outputs are gone, replaced or damaged" in repaired
    with serving(state, monkeypatch) as storage:
        for kind in ("scores", "pairs"):
            artifact = Artifact.open(storage, join(root, kind), kind=kind)
            assert sum(table.num_rows for _, table in artifact.iter_shards()) == artifact.manifest.rows  # sha256s

    # item 7: the S3 data deleted, the next run runs every step again and leaves every artifact
    shutil.rmtree(state / "s3")
    third = run([*argv, "--set", f"filter.pair_min_margin={margin}"], monkeypatch, capsys)
    assert "those steps run again" in third
    # only the plans, whose outputs are lists, not data, and the same as before, the train method and the povid
    # placement (words: "clipdpo", "cpu" here) and povid-pairs on the CPU, which makes nothing for method clipdpo
    # (it returns "": no artifact to lose)
    assert {step for step, cached in cached_column(third).items() if cached == "yes"} == {
        "plan-shards",
        "plan-evaluation",
        "train-method",
        "povid-placement",
        "povid-pairs-cpu",
    }, third
    with serving(state, monkeypatch) as storage:
        assert Artifact.open(storage, join(root, "pairs"), kind="pairs").manifest.rows == count
        assert storage.exists(join(root, "model", "train_summary.json"))
        assert storage.exists(join(root, "evaluation", "metrics.json"))
