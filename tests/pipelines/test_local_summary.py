"""The local run's terminal summary, from kfp's local run folders (laid out as kfp's local runner writes them)."""

from __future__ import annotations

import json
import os

from clipdpo.report.local_summary import StepLine, collect, display_name, format_summary, run_dirs, task_names


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
