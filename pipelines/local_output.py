"""The local run's terminal: one line per step; kfp's local executor output in a log file (a demo run used to
print ~1,300 lines of it).

kfp's local runner prints every task's executor input and output JSON, its streamed logs and its own
INFO lines: about 1,200 lines for the demo run. `steps_only` sends all of that (this process's stdout
and stderr, which the task subprocesses' output goes through) to a log file, and prints one line per
step as it ends: its name, cached or run, rows and seconds from its Metrics output, and notes when it ended
(`StepEnds`: the summary's wall time per round). On a failure each
failed step's own error line is shown (`failed_steps`; the log's tail when none can be found), with the
log's path. `--verbose` keeps kfp's output on the terminal.

It reads kfp 2.17's local log lines ("Wrote executor output file to <path>." when a task succeeded,
"Task '<name>' finished with status FAILURE", "Task <name> cache hit"); any other line only lands in the
log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from typing import Callable, Iterator

from clipdpo.report.local_summary import ROW_KEYS, display_name, task_metrics
from pipelines.local_stop import RunStopped

ANSI = re.compile(r"\x1b\[[0-9;]*m")
WROTE = re.compile(r"Wrote executor output file to (\S+)\.\s*$")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
CACHE_HIT = re.compile(r"Task (\S+) cache hit")
TAIL_LINES = 40  # of the log, shown when the run fails and no failed step's error can be found in it
# The last line of a Python traceback ("ValueError: ...", "clipdpo.storage.StorageError: ...") or a stage's
# one-line error ("error: ..."), as a failed task's streamed output holds it.
ERROR_LINE = re.compile(
    r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\w*(?::.*)?|error: .*)$"
)


def failed_steps(log_text: str) -> list[tuple[str, str]]:
    """(task, its own error line) for every task the log reports as failed: the last error line of the output
    kfp streamed for that task, which it prints just before the task's "finished with status FAILURE" line
    (other tasks' output, printed earlier or later, is not read). "" when the task printed none."""
    lines = [ANSI.sub("", line) for line in log_text.splitlines()]
    out = []
    for number, line in enumerate(lines):
        match = FINISHED.search(line)
        if not match or match.group(2) == "SUCCESS":
            continue
        error = ""
        for previous in reversed(lines[max(0, number - 200) : number]):
            if FINISHED.search(previous) or WROTE.search(previous):
                break  # the output before this belongs to another task
            if ERROR_LINE.match(previous):
                error = previous.strip()
                break
        out.append((match.group(1), error))
    return out


def step_line(name: str, cached: bool, metrics: dict[str, float] | None, status: str = "SUCCESS") -> str:
    """`name  cached|run  rows  seconds` (FAILED instead of run when the step failed)."""
    metrics = metrics or {}
    rows = next((metrics[k] for k in ROW_KEYS if k in metrics), None)
    seconds = metrics.get("step_seconds")
    state = "cached" if cached else ("run" if status == "SUCCESS" else status)
    return (
        f"  {name:<28} {state:<7} {'–' if rows is None else format(rows, ',.0f'):>9} rows "
        f"{'–' if seconds is None else format(seconds, '.1f'):>7} s"
    )


class StepEnds(dict):
    """{step: when it last ended (ran, failed or was served from kfp's cache), in seconds after the run began};
    a step is a task folder's last part, as local_summary names it (a ParallelFor's iterations share it)."""

    def __init__(self) -> None:
        super().__init__()
        self.began = time.monotonic()

    def note(self, step: str) -> None:
        self[step] = round(time.monotonic() - self.began, 3)


class StepLines(io.TextIOBase):
    """A text stream that keeps everything in `log` and calls `say` with one line per finished step; the
    steps go into `seen` as they end."""

    def __init__(self, log: io.TextIOBase, say: Callable[[str], None], seen: StepEnds | None = None):
        self.log, self.say = log, say
        self.seen = StepEnds() if seen is None else seen
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.read_line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def read_line(self, line: str) -> None:
        # A task that succeeded wrote its executor output: its line comes from that file. (kfp runs the
        # iterations of a ParallelFor at once, so their "finished" lines come in any order, or get lost in
        # a logging error when two threads swap the log handlers.) A failed task wrote none.
        if match := WROTE.search(line):
            task_dir = os.path.dirname(match.group(1))
            task = (
                os.path.relpath(task_dir, os.path.dirname(os.path.dirname(task_dir)))
                if "-iteration-" in task_dir
                else os.path.basename(task_dir)
            )
            self.seen.note(os.path.basename(task_dir))
            self.say(step_line(display_name(task), cached=False, metrics=task_metrics(task_dir)))
        elif (match := FINISHED.search(line)) and match.group(2) != "SUCCESS":
            self.seen.note(match.group(1))
            self.say(step_line(match.group(1), cached=False, metrics=None, status=match.group(2)))


class CacheHits(logging.Handler):
    """kfp logs a cache hit at INFO on the root logger, outside its own log context: one line each."""

    def __init__(self, say: Callable[[str], None], seen: StepEnds):
        super().__init__(logging.INFO)
        self.say, self.seen = say, seen

    def emit(self, record: logging.LogRecord) -> None:
        match = CACHE_HIT.search(ANSI.sub("", record.getMessage()))
        if match:
            self.seen.note(match.group(1).strip("'"))
            self.say(step_line(match.group(1).strip("'"), cached=True, metrics=None))


@contextlib.contextmanager
def _terminal_handlers_to(stream: io.TextIOBase) -> Iterator[None]:
    """Root log handlers that write to the terminal write to `stream` within. A library's first
    `logging.warning` (open_clip's, in a world build) installs one on stderr; kfp's ParallelFor threads each
    swap the root's handlers in and out, so a thread can log while another has put that one back, and its
    INFO lines then reached the terminal."""
    terminal = {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}
    moved = [
        (h, h.stream)
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream in terminal
    ]
    for handler, _ in moved:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler, original in moved:
            handler.setStream(original)


@contextlib.contextmanager
def steps_only(log_path: str, verbose: bool = False) -> Iterator[StepEnds | None]:
    """Within: kfp's output to `log_path`, one line per step on the terminal (everything with `verbose`).
    Yields the steps this run ran or served from kfp's cache with when each ended, filled as they end (None with
    `verbose`): a step in a branch not taken (dsl.If) is not among them."""
    if verbose:
        yield None
        return
    terminal = sys.stdout

    def say(line: str) -> None:
        terminal.write(line + "\n")
        terminal.flush()

    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    seen = StepEnds()
    root, hits = logging.getLogger(), CacheHits(say, seen)
    level = root.level
    started = time.monotonic()
    with open(log_path, "a") as log:
        stream = StepLines(log, say, seen)
        root.addHandler(hits)
        root.setLevel(min(level or logging.WARNING, logging.INFO))
        try:
            # handlers first: "the terminal" is sys.stdout/stderr before the redirect
            with _terminal_handlers_to(stream), contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield seen
        except RunStopped:  # SIGTERM / Ctrl-C: no step failed; the run says what it stopped
            raise
        except BaseException:
            log.flush()
            text = open(log_path).read()
            failed = [(task, error) for task, error in failed_steps(text) if error]
            if failed:
                for task, error in failed:
                    say(f"step {task} failed: {error}")
                say(f"the run failed after {time.monotonic() - started:.0f}s; every step's output: {log_path}")
            else:
                say(f"the run failed after {time.monotonic() - started:.0f}s; the last lines of {log_path}:")
                say("\n".join(text.splitlines()[-TAIL_LINES:]).rstrip())
            raise
        finally:
            root.removeHandler(hits)
            root.setLevel(level)
    say(f"kfp's local executor output: {log_path}")
