"""A local run stopped by SIGTERM or SIGINT takes the processes it started with it.

kfp's local SubprocessRunner starts each step as a plain child (`sh` -> `python3 -m kfp.dsl.executor_main`, and
whatever the step starts in turn). The default SIGTERM ended only this process: the step went on as an orphan (the
generate step, loading a model, for another minute); and Ctrl-C left kfp's pool threads to start the ParallelFor
iterations still queued. Within `StopOnSignal`, SIGTERM and SIGINT end every process started since it was entered,
the children's children too (found by walking /proc: Linux; this process is their subreaper meanwhile, so a child
whose parent dies stays below it), SIGKILL for those still alive after `grace_s`; a reaper thread goes on ending
what kfp's threads start while the run unwinds. Then `RunStopped` is raised in the main thread, so `finally` blocks
run (the run's S3 server, started before, is stopped by its owner, in order). What a step had written stays as it
is: stages write atomically.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, NamedTuple

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 3.0  # a step's Python ends on SIGTERM at once; longer only when it ignores it
POLL_S = 0.1


class Process(NamedTuple):
    """A process as /proc names it; `started` (clock ticks after boot) tells a reused pid apart."""

    pid: int
    ppid: int
    started: int
    name: str
    zombie: bool


def read_process(pid: int) -> Process | None:
    """/proc/<pid>/stat; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # from the state on: a name may hold spaces and ')'
    return Process(pid, int(fields[1]), int(fields[19]), name, zombie=fields[0] in "ZX")


def descendants(root: int) -> list[Process]:
    """Every live process below `root` (children, their children, ...), parents before their children; none where
    there is no /proc (not Linux: there a stop ends this process only, as before)."""
    children: dict[int, list[Process]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        process = read_process(int(entry)) if entry.isdigit() else None
        if process is not None and not process.zombie:
            children.setdefault(process.ppid, []).append(process)
    found, queue = [], [root]
    while queue:
        below = children.get(queue.pop(0), [])
        found += below
        queue += [process.pid for process in below]
    return found


def alive(process: Process) -> bool:
    """Is this very process (not another that got its pid) still running?"""
    now = read_process(process.pid)
    return now is not None and now.started == process.started and not now.zombie


def signal_all(processes: list[Process], signum: int) -> None:
    for process in processes:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass


def end_tree(root: int, spared: set[tuple[int, int]], grace_s: float) -> list[Process]:
    """SIGTERM to every process below `root` but the `spared` (pid, started) pairs, and to those that appear meanwhile;
    SIGKILL to those still alive after `grace_s` (then they are not waited for: one stuck in the kernel must not
    hold the stop). The processes it signalled."""
    ended: dict[tuple[int, int], Process] = {}
    killed: set[tuple[int, int]] = set()
    deadline = time.monotonic() + grace_s
    while True:
        new = [p for p in descendants(root) if (p.pid, p.started) not in spared and (p.pid, p.started) not in ended]
        signal_all(new, signal.SIGTERM)
        ended.update({(p.pid, p.started): p for p in new})
        left = [p for key, p in ended.items() if key not in killed and alive(p)]
        if not left and not new:
            return list(ended.values())
        if time.monotonic() >= deadline:
            signal_all(left, signal.SIGKILL)
            killed.update((p.pid, p.started) for p in left)
        time.sleep(POLL_S)


def adopt_orphans(flag: int) -> int:
    """`flag` 1: this process becomes the subreaper of its descendants (Linux PR_SET_CHILD_SUBREAPER), so a process
    whose parent ends is re-parented here, not to init, and `descendants` still finds it (a step killed just after it
    started a child would otherwise leave that child out of reach). The flag it had before (0 where unsupported)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        previous = ctypes.c_int(0)
        libc.prctl(37, ctypes.byref(previous))  # 37 = PR_GET_CHILD_SUBREAPER
        libc.prctl(36, flag)  # 36 = PR_SET_CHILD_SUBREAPER
        return previous.value
    except (OSError, AttributeError):
        return 0


class RunStopped(BaseException):
    """The run got SIGTERM or SIGINT (BaseException: kfp's `except Exception` must not take it for a failed task)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopOnSignal:
    """Within: SIGTERM and SIGINT end the processes started since entering (`end_tree`) and raise RunStopped;
    `ended` lists them once the block is left, `signum` says which signal came (None: none)."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.signum: int | None = None
        self.ended: list[Process] = []
        self._spared: set[tuple[int, int]] = set()
        self._previous: dict[int, Any] = {}
        self._leaving = threading.Event()
        self._reaper: threading.Thread | None = None
        self._subreaper = 0

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set signal handlers (and it alone receives signals)
        # Started before (a loopback S3 server, or a test's): not this block's to end
        self._spared = {(p.pid, p.started) for p in descendants(os.getpid())}
        self._subreaper = adopt_orphans(1)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._stop)
        return self

    def _stop(self, signum: int, _frame) -> None:
        if self._reaper is None:  # the first signal
            if self.signum is not None:
                return  # came while the first one's handler ends the processes: that stop goes on
            self.signum = signum
            self._end()
            self._reaper = threading.Thread(target=self._reap, name="stop-reaper", daemon=True)
            self._reaper.start()
        raise RunStopped(signum)  # again on a later one: the run is to stop, wherever its unwinding is

    def _end(self) -> None:
        for process in end_tree(os.getpid(), self._spared, self.grace_s):
            self._spared.add((process.pid, process.started))
            self.ended.append(process)

    def _reap(self) -> None:
        """While the run unwinds, kfp's pool threads start the iterations still queued: end them as they come."""
        while not self._leaving.wait(POLL_S):
            self._end()

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if not self._previous:
            return  # entered outside the main thread: nothing was set
        if self._reaper is not None:
            self._leaving.set()
            self._reaper.join()
            self._end()  # started between the reaper's last look and now
        adopt_orphans(self._subreaper)
        for process in self.ended:
            if process.ppid != os.getpid():  # adopted (a killed step's child): no Popen here waits for it
                try:
                    os.waitpid(process.pid, os.WNOHANG)
                except ChildProcessError:  # init's, or already waited for
                    pass

    def summary(self) -> str:
        """One line: the signal and the processes it ended."""
        assert self.signum is not None
        names: dict[str, int] = {}
        for process in self.ended:
            names[process.name] = names.get(process.name, 0) + 1
        what = ", ".join(f"{count} {name}" for name, count in names.items()) if names else "none running"
        return (
            f"stopped by {signal.Signals(self.signum).name}: ended {len(self.ended)} process(es) the run had started "
            f"({what}); its finished steps stay cached"
        )
