"""The local run's terminal summary, from kfp's local run folders (laid out as kfp's local runner writes them)."""

from __future__ import annotations

import json
import os

import pytest

from clipdpo.report.local_summary import (
    StepLine,
    collect,
    display_name,
    format_summary,
    round_lines,
    run_dirs,
    task_names,
)


def _task(root, run, task, metadata):
    os.makedirs(os.path.join(root, run, task))
    output = {
        "artifacts": {
            "metrics": {"artifacts": [{"name": "metrics", "uri": "x", "metadata": metadata}]},
            "report_html": {"artifacts": [{"name": "report_html", "uri": "y"}]},
        }
    }
    with open(os.path.join(root, run, task, "executor_output.json"), "w") as out:
        json.dump(output, out)


def test_cached_steps_take_their_numbers_from_the_run_that_ran_them(tmp_path):
    root = str(tmp_path)
    _task(root, "clipdpo-2026-11-29-10-00-00-000001", "ingest", {"rows": 10, "step_seconds": 2.5})
    _task(root, "clipdpo-2026-11-29-10-00-00-000001", "train", {"steps": 4, "final_loss": 0.6, "step_seconds": 30.0})
    _task(root, "clipdpo-2026-11-29-11-00-00-000001", "train", {"steps": 6, "final_loss": 0.5, "step_seconds": 40.0})
    _task(root, "clipdpo-2026-11-29-11-00-00-000001", "for-loop-1-iteration-1/score-shard", {"rows": 3})
    os.makedirs(os.path.join(root, "other-2026-11-29-12-00-00-000001", "ingest"))  # another pipeline's run
    assert task_names(root, "clipdpo") == ["ingest", "for-loop-1-iteration-1/score-shard", "train"]
    assert display_name("for-loop-1-iteration-1/score-shard") == "score-shard[1]"
    before = {os.path.join(root, "clipdpo-2026-11-29-10-00-00-000001")}  # this run made the 11:00 folder
    lines = collect(root, "clipdpo", ["ingest", "train", "evaluate"], before)
    assert [(line.task, line.cached, line.rows) for line in lines] == [
        ("ingest", True, 10.0),
        ("train", False, 6.0),
        ("evaluate", False, None),
    ]
    # a rerun served wholly from kfp's cache adds no folder: every step is cached
    everything_before = set(run_dirs(root, "clipdpo"))
    assert all(line.cached for line in collect(root, "clipdpo", ["ingest", "train"], everything_before))
    assert lines[1].metrics == {"steps": 6.0, "final_loss": 0.5, "step_seconds": 40.0}
    text = format_summary(lines, {"amber_chair": {"base": 10.0, "clip-dpo": 6.25}}, "/r/report.html")
    rows = text.splitlines()
    assert rows[3].split() == ["evaluate", "no", "–", "–"]
    assert rows[0].split() == ["step", "cached", "rows", "seconds"]
    assert rows[1].split() == ["ingest", "yes", "10", "2.5"] and rows[2].split() == ["train", "no", "6", "40.0"]
    assert rows[5].split() == ["metric", "base", "clip-dpo"] and rows[6].split() == ["amber_chair", "10.00", "6.25"]
    assert rows[-1] == "report: /r/report.html"
    # the filter's line says what its pairs are made of (the QA pairs a default run must have)
    pairs = StepLine("filter-pairs", False, {"rows": 942.0, "caption_pairs": 581.0, "qa_pairs": 361.0})
    assert format_summary([pairs], {}, "r").splitlines()[1].split() == [
        "filter-pairs",
        "no",
        "942",
        "–",
        "(581",
        "caption",
        "+",
        "361",
        "QA",
        "pairs)",
    ]


def test_a_step_this_run_did_not_reach_is_left_out(tmp_path):
    """A dsl.If branch an earlier run took and this one did not (povid-pairs on the GPU, then on the CPU) is not
    listed as cached: only the steps the run ran or served from cache (pipelines.local_output.steps_only)."""
    root = str(tmp_path)
    _task(root, "clipdpo-2026-11-29-10-00-00-000001", "povid-pairs", {"rows": 10, "step_seconds": 5.0})
    _task(root, "clipdpo-2026-11-29-11-00-00-000001", "povid-pairs-cpu", {"step_seconds": 2.0})
    _task(root, "clipdpo-2026-11-29-11-00-00-000001", "for-loop-1-iteration-0/score-shard", {"rows": 3})
    tasks = task_names(root, "clipdpo")
    before = {os.path.join(root, "clipdpo-2026-11-29-10-00-00-000001")}
    assert [line.task for line in collect(root, "clipdpo", tasks, before)] == tasks  # no run's steps given: all
    lines = collect(root, "clipdpo", tasks, before, this_run={"povid-pairs-cpu", "score-shard"})
    assert [(line.task, line.cached) for line in lines] == [
        ("for-loop-1-iteration-0/score-shard", False),
        ("povid-pairs-cpu", False),
    ]


def test_no_runs_yet(tmp_path):
    assert [(line.cached, line.metrics) for line in collect(str(tmp_path / "none"), "clipdpo", ["ingest"], set())] == [
        (False, {})
    ]


def test_a_rerun_with_one_more_round_shows_the_rounds_before_cached_and_each_rounds_wall_time(tmp_path):
    """ROUNDS=3, then ROUNDS=4 (task names and rounds as build_pipeline names them): the second run ran round 4 and
    the steps after the rounds; kfp's cache served rounds 1-3, each a line with all its steps cached, and each
    round's wall time runs from the end of the round before (the run's start for round 1) to its last step's end."""
    root, first, second = str(tmp_path), "clipdpo-2026-12-07-10-00-00-000001", "clipdpo-2026-12-07-11-00-00-000001"
    task_rounds = {"ingest": 1, "train": 1, "round-check": 1, "round-start": 2, "train-2": 2, "round-check-2": 2}
    task_rounds.update({"round-start-2": 3, "train-3": 3, "round-check-3": 3})
    task_rounds.update({"round-start-3": 4, "for-loop-9-iteration-0/round-generate-shard-3": 4, "train-4": 4})
    task_rounds = {os.path.basename(name): index for name, index in task_rounds.items()}
    for name in ("ingest", "train", "round-check", "round-start", "train-2", "round-check-2"):
        _task(root, first, name, {"step_seconds": 1.0})
    for name in ("round-start-2", "train-3", "round-check-3", "gate", "report"):
        _task(root, first, name, {"step_seconds": 1.0})
    for name in ("round-start-3", "for-loop-9-iteration-0/round-generate-shard-3", "train-4", "gate", "report"):
        _task(root, second, name, {"step_seconds": 2.0})
    ended = {name: 0.1 * at for at, name in enumerate(task_rounds, start=1) if task_rounds[name] < 4}  # cache hits
    ended.update({"round-start-3": 10.0, "round-generate-shard-3": 70.5, "train-4": 100.9, "gate": 106.0})
    ended["report"] = 110.9
    before = {os.path.join(root, first)}
    lines = collect(root, "clipdpo", task_names(root, "clipdpo"), before, this_run=ended)
    assert {line.task for line in lines if not line.cached} == {
        "round-start-3",
        "for-loop-9-iteration-0/round-generate-shard-3",
        "train-4",
        "gate",
        "report",
    }
    assert [(r.round, r.steps, r.cached) for r in round_lines(lines, task_rounds, ended)] == [
        (1, 3, 3),
        (2, 3, 3),
        (3, 3, 3),
        (4, 3, 0),
        (None, 2, 0),
    ]
    seconds = [r.seconds for r in round_lines(lines, task_rounds, ended)]
    assert seconds == pytest.approx([0.3, 0.3, 0.3, 100.9 - 0.9, 110.9 - 100.9])  # ends 0.3, 0.6, 0.9, 100.9, 110.9
    assert sum(seconds) == pytest.approx(110.9)  # the run's time, split
    text = format_summary(lines, {}, "/r/report.html", task_rounds, ended).splitlines()
    assert text[0].split() == ["step", "round", "cached", "rows", "seconds"]
    rows = {line.split()[0]: line.split()[1:] for line in text[1 : len(lines) + 1]}
    assert rows["train-2"] == ["2", "yes", "–", "1.0"] and rows["train-4"] == ["4", "no", "–", "2.0"]
    assert rows["round-generate-shard-3[0]"][:2] == ["4", "no"] and rows["gate"][:2] == ["–", "no"]
    table = text[text.index("round  steps  cached    wall s") :]
    assert [line.split() for line in table[1:6]] == [
        ["1", "3", "3", "0.3"],
        ["2", "3", "3", "0.3"],
        ["3", "3", "3", "0.3"],
        ["4", "3", "0", "100.0"],
        ["after", "2", "0", "10.0"],
    ]
    # one round: no round column, no round table (as before); no end times known: no wall times
    assert "round" not in format_summary(lines, {}, "/r/report.html").splitlines()[0]
    assert {r.seconds for r in round_lines(lines, task_rounds, None)} == {None}
