"""The local run's terminal (pipelines/local_output.py): kfp's local executor output goes to a log file and
one line per step shows, on a real two-step kfp pipeline through kfp's local SubprocessRunner; --verbose
keeps kfp's output (the demo run used to print about 1,300 lines)."""

# no `from __future__ import annotations`: kfp reads the component signatures' real types

import json
import re

from kfp import dsl

from pipelines.local_output import StepLines, step_line


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def add(a: int, b: int) -> int:
    return a + b


@dsl.pipeline(name="two-steps")
def two_steps(a: int = 1):
    first = add(a=a, b=2)
    add(a=first.output, b=3).set_caching_options(True)


@dsl.pipeline(name="branches")
def branches(a: int = 1):
    first = add(a=a, b=2).set_caching_options(True)
    with dsl.If(first.output == 3):
        add(a=first.output, b=10).set_caching_options(True)
    with dsl.Else():
        add(a=first.output, b=20).set_caching_options(True)


def run_two_steps(tmp_path, verbose: bool, a: int = 1, pipeline=two_steps):
    """The steps this run ran or served from cache, as steps_only saw them (None with `verbose`)."""
    from kfp import local

    from pipelines.local_output import steps_only

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), enable_caching=True)
    with steps_only(str(tmp_path / "logs" / "run.log"), verbose) as seen:
        pipeline(a=a)
    return seen


def test_one_line_per_step_and_kfp_output_in_the_log(tmp_path, capsys):
    ended = run_two_steps(tmp_path, verbose=False)
    assert set(ended) == {"add", "add-2"}
    assert 0 < ended["add"] <= ended["add-2"]  # when each ended (the second waits for the first's output)
    out = capsys.readouterr().out.splitlines()
    assert [re.sub(r"\s+", " ", line.strip()) for line in out] == [
        "add run – rows – s",
        "add-2 run – rows – s",
        f"kfp's local executor output: {tmp_path / 'logs' / 'run.log'}",
    ]
    log = (tmp_path / "logs" / "run.log").read_text()
    assert "Executing task" in log and "executor_input" in log and "finished with status" in log
    assert set(run_two_steps(tmp_path, verbose=False)) == {"add", "add-2"}  # the same inputs: kfp's cache serves both
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()[:2]] == [
        ["add", "cached"],
        ["add-2", "cached"],
    ]


def test_a_branch_not_taken_is_not_among_the_runs_steps(tmp_path, capsys):
    """dsl.If / dsl.Else (the povid pairs step's GPU and CPU branches): the summary lists this run's steps only,
    so the branch an earlier run took and this one did not is not shown as cached."""
    assert set(run_two_steps(tmp_path, verbose=False, a=1, pipeline=branches)) == {"add", "add-2"}
    assert set(run_two_steps(tmp_path, verbose=False, a=5, pipeline=branches)) == {"add", "add-3"}
    assert set(run_two_steps(tmp_path, verbose=False, a=1, pipeline=branches)) == {"add", "add-2"}  # cached, both
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[-3:-1]] == [["add", "cached"], ["add-2", "cached"]]


def test_verbose_keeps_kfp_output(tmp_path, capsys):
    assert run_two_steps(tmp_path, verbose=True, a=5) is None
    out = capsys.readouterr().out
    assert "Executing task" in out and len(out.splitlines()) > 40  # kfp's own lines, as before
    assert not (tmp_path / "logs").exists()


def test_a_loop_iteration_is_named_by_its_index_and_rows_come_from_its_metrics(tmp_path):
    """A finished task's line reads its executor output (kfp 2.17's log lines, as the runner sees them)."""
    task = tmp_path / "clipdpo-2026" / "for-loop-1-iteration-3" / "generate-shard"
    task.mkdir(parents=True)
    metrics = {"type": {"schemaTitle": "system.Metrics"}, "metadata": {"rows": 1234, "step_seconds": 41.94}}
    (task / "executor_output.json").write_text(json.dumps({"artifacts": {"metrics": {"artifacts": [metrics]}}}))
    said, log = [], open(tmp_path / "log", "w")
    stream = StepLines(log, said.append)
    stream.write(f"    [KFP Executor] INFO]: Wrote executor output file to {task / 'executor_output.json'}.\n")
    stream.write(
        "21:41:57.021 - INFO - Task \x1b[96m'generate-shard'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    )
    assert said == [step_line("generate-shard[3]", cached=False, metrics={"rows": 1234, "step_seconds": 41.94})]
    assert re.sub(r"\s+", " ", said[0].strip()) == "generate-shard[3] run 1,234 rows 41.9 s"


def test_set_needs_a_stage(capsys):
    import pytest

    from pipelines.run import main

    for bad in ("pair_min_margin=3", "filtr.pair_min_margin=3", "filter.pair_min_margin"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--set", bad])
        assert exit_info.value.code == 2
        assert f"--set {bad!r}: expected STAGE.KEY=VALUE with STAGE one of ['ingest'," in capsys.readouterr().err


def test_set_changes_one_stage_config():
    from pipelines.run import with_overrides

    configs = {"filter": {"pair_min_margin": 0.5, "caption_min_score": -100.0}, "train": {"epochs": 2}}
    assert with_overrides(configs, ["filter.pair_min_margin=3", "train.epochs=1"]) == {
        "filter": {"pair_min_margin": 3, "caption_min_score": -100.0},
        "train": {"epochs": 1},
    }
    assert configs["filter"]["pair_min_margin"] == 0.5  # a copy


def test_parallel_iterations_each_get_their_line_and_a_failure_shows(tmp_path):
    """kfp runs a ParallelFor's iterations at once: both executor outputs are written before either
    "finished" line, and one of those may be lost to a logging error; each still gets its line."""
    said = []
    stream = StepLines(open(tmp_path / "log", "w"), said.append)
    for i in (0, 1):
        task = tmp_path / "clipdpo-2026" / f"for-loop-3-iteration-{i}" / "evaluate-task"
        task.mkdir(parents=True)
        (task / "executor_output.json").write_text("{}")
        stream.write(f"  Wrote executor output file to {task / 'executor_output.json'}.\n")
    stream.write("INFO - Task 'evaluate-task' finished with status SUCCESS\n")
    stream.write("ERROR - Task 'score-shard' finished with status FAILURE\n")
    assert [line.split()[:2] for line in said] == [
        ["evaluate-task[0]", "run"],
        ["evaluate-task[1]", "run"],
        ["score-shard", "FAILURE"],
    ]


def test_a_root_handler_on_the_terminal_logs_into_the_run_log_within(tmp_path, capsys):
    import logging
    import sys

    from pipelines.local_output import steps_only

    handler = logging.StreamHandler(sys.stderr)  # what a library's first logging.warning installs
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with steps_only(str(tmp_path / "logs" / "run.log")):
            root.warning("a library warning during the run")
        assert handler.stream is sys.stderr  # given back afterwards
    finally:
        root.removeHandler(handler)
    captured = capsys.readouterr()
    assert "a library warning" not in captured.err + captured.out
    assert "a library warning during the run" in (tmp_path / "logs" / "run.log").read_text()


# What kfp 2.17's local runner wrote for a failed shard of a real demo run (trimmed): a succeeded task's output,
# then the failed task's streamed traceback, then its FAILURE line, then the orchestrator skipping the rest.
RECORDED_FAILURE = """\
            Wrote executor output file to /s/kfp/clipdpo-1/for-loop-1-iteration-0/generate-shard/executor_output.json.
12:34:20.100 - INFO - Task \x1b[96m'generate-shard'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
            Traceback (most recent call last):
              File "/s/src/clipdpo/outputref.py", line 33, in split
                uri, _, version = ref.partition(SEPARATOR)
                                  ^^^^^^^^^^^^^
            AttributeError: 'float' object has no attribute 'partition'


12:34:21.530 - ERROR - Task \x1b[96m'generate-shard'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
    --------------------------------------------------------------------------------
INFO     root:enhanced_dag_orchestrator.py:575 Skipping task generate-finalize: upstream task(s) ['for-loop-1'] failed.
INFO     root:enhanced_dag_orchestrator.py:575 Skipping task report: upstream task(s) ['evaluate-merge'] failed.
"""


def test_a_failed_step_is_named_with_its_own_error_line():
    from pipelines.local_output import failed_steps

    assert failed_steps(RECORDED_FAILURE) == [
        ("generate-shard", "AttributeError: 'float' object has no attribute 'partition'")
    ]
    # a stage's own one-line error counts too; another task's output before the failed one's is not read
    other = "    error: not this one\nINFO - Task 'ingest' finished with status SUCCESS\n"
    mine = "    error: s3://b/x: no such object\nERROR - Task 'filter-pairs' finished with status FAILURE\n"
    assert failed_steps(other + mine) == [("filter-pairs", "error: s3://b/x: no such object")]
    assert failed_steps(other + "ERROR - Task 'train' finished with status FAILURE\n") == [("train", "")]


def test_a_local_run_whose_step_fails_prints_that_steps_error_and_no_traceback(tmp_path, monkeypatch, capsys):
    """The terminal shows the failed step's own error line (not the last lines of the whole log, which belong to
    the tasks kfp skipped), then one line, exit 1: no kfp RuntimeError traceback."""
    import pipelines.clipdpo_pipeline as pipeline_module
    import pipelines.run as run

    def failing_pipeline(**arguments):
        print(RECORDED_FAILURE, flush=True)  # what kfp streams into the run's log
        raise RuntimeError(
            "Pipeline \x1b[95m'clipdpo'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. Inner task failed: "
            "\x1b[96m'generate-shard'\x1b[0m inside \x1b[96m'for-loop-1-iteration-1'\x1b[0m."
        )

    class NoServer:
        env: dict = {}
        endpoint_url = "http://127.0.0.1:1"

        def death_note(self):
            return None

        def stop(self):
            pass

    from clipdpo import s3server

    monkeypatch.setattr(s3server, "start", lambda folder: NoServer())
    monkeypatch.setattr(pipeline_module, "build_pipeline", lambda values, rounds=1: failing_pipeline)
    monkeypatch.setattr(run, "init_kfp", lambda root: None)
    monkeypatch.delenv("KFP_HOST", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    (tmp_path / "configs").mkdir()
    code = run.main(["--config-dir", str(tmp_path / "configs"), "--state-dir", str(tmp_path / "state")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "step generate-shard failed: AttributeError: 'float' object has no attribute 'partition'" in out
    assert "Skipping task" not in out  # not the log's tail
    assert "Traceback" not in err and err.strip().splitlines() == [
        "error: Pipeline 'clipdpo' finished with status FAILURE. Inner task failed: 'generate-shard' inside "
        "'for-loop-1-iteration-1'."
    ]
