"""Progress inside long work (a shard's captions, a shard's embeddings, training steps, an evaluation's items).

`Progress(what, total, unit)` counts work done with `advance(n)` and logs one line at most every `every_s`
seconds, and once when the work is done (work done within one interval logs nothing):
`generate captions (llava): 120/400 requests (30%), 12.0 requests/s, ETA 23s` (+ any figures given, e.g. the
training loss). The maths (rate, ETA) are the pure functions below.

Quiet mode: CLIPDPO_QUIET=1 (or a stage's --quiet) logs no progress lines at all; CLIPDPO_PROGRESS_SECONDS
sets the interval (default 30 s).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable

log = logging.getLogger("clipdpo.progress")

DEFAULT_EVERY_S = 30.0


def rate(done: float, seconds: float) -> float | None:
    """Units per second so far; None before any time has passed."""
    return done / seconds if seconds > 0 else None


def eta_seconds(done: float, total: float, seconds: float, start: float = 0) -> float | None:
    """Seconds left at this process's rate so far (`start`: units done before it began, e.g. a resumed run);
    0 when finished, None while there is no rate yet."""
    if done >= total:
        return 0.0
    speed = rate(done - start, seconds)
    if not speed:
        return None
    return (total - done) / speed


def duration(seconds: float | None) -> str:
    """`45s`, `12m05s`, `3h07m`; `?` when unknown."""
    if seconds is None or math.isinf(seconds):
        return "?"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def figure(value: float) -> str:
    """A figure at a useful precision: 1,234 / 12.3 / 0.693."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def progress_line(
    what: str, done: float, total: float, seconds: float, unit: str, start: float = 0, **extra: float
) -> str:
    """`<what>: <done>/<total> <unit> (<pct>%), <rate> <unit>/s, ETA <eta>[, <name> <value>...]`; the rate is
    this process's (`start`: units done before it began)."""
    percent = 100.0 * done / total if total else 100.0
    speed = rate(done - start, seconds)
    parts = [
        f"{what}: {done:,.0f}/{total:,.0f} {unit} ({percent:.0f}%)",
        f"{'?' if speed is None else figure(speed)} {unit}/s",
        f"ETA {duration(eta_seconds(done, total, seconds, start))}",
    ]
    parts += [f"{name.replace('_', ' ')} {figure(value)}" for name, value in extra.items()]
    return ", ".join(parts)


def quiet() -> bool:
    return os.environ.get("CLIPDPO_QUIET", "") not in ("", "0")


class Progress:
    """Counts units of one piece of work and logs a line at most every `every_s` seconds and at the end."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "rows",
        *,
        done: int = 0,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] | None = None,
    ):
        self.what, self.total, self.unit = what, total, unit
        self.done, self.start_done = done, done  # a resumed run's rate counts only what it did itself
        self.every_s = (
            every_s if every_s is not None else float(os.environ.get("CLIPDPO_PROGRESS_SECONDS", DEFAULT_EVERY_S))
        )
        self.clock = clock
        self.say = say or log.info
        self.started = self.last = clock()
        self.lines = 0  # lines logged so far

    def advance(self, n: int = 1, **extra: float) -> str | None:
        """Count `n` more units; the line logged now (None when it is not time yet, or in quiet mode)."""
        self.done += n
        now = self.clock()
        finished = self.done >= self.total
        due = now - self.last >= self.every_s
        # the last line only for work that showed progress before or took longer than one interval
        if quiet() or not (due or (finished and (self.lines or now - self.started >= self.every_s))):
            return None
        self.last, self.lines = now, self.lines + 1
        line = progress_line(self.what, self.done, self.total, now - self.started, self.unit, self.start_done, **extra)
        self.say(line)
        return line

    def finish(self, **extra: float) -> str | None:
        """Count whatever is left as done (an engine that reported nothing along the way) and log the last line."""
        return self.advance(max(self.total - self.done, 0), **extra) if self.done < self.total else None
