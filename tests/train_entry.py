"""`python -m clipdpo.train` as the tests launch it (script or under torchrun): the product's entry
point, plus what only a test needs, injected here so that none of it ships in `clipdpo`.

- `--kill-after-step N` (taken off the arguments before the stage parses them): each process
  SIGKILLs itself right after optimizer step N, once that step's checkpoint logic has run, as a
  node dying mid-run would (`kill_after_step`, which tests/round_step_entry.py uses with SIGTERM).
- DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op when its communication
  backend starts (about a minute on two idle cores, several under load, on every fresh machine).
  Only DeepSpeed's inference all-reduce uses it, never ZeRO training, so the tests skip the build.
"""

from __future__ import annotations

import os
import signal
import sys


def skip_deepspeed_shm_build() -> None:
    import importlib

    # not `import deepspeed.comm.torch as m`: that resolves the attribute `deepspeed.comm.torch`, the torch package
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None  # looked up at call time by TorchBackend.__init__


def kill_after_step(kill_step: int, signum: int = signal.SIGKILL) -> None:
    from clipdpo.train.callbacks import CheckpointCallback

    save = CheckpointCallback.on_step_end

    def save_then_die(self, run, step: int, row: dict) -> None:
        save(self, run, step, row)
        if step == kill_step:
            name = signal.Signals(signum).name
            print(f"train_entry: {name} after step {step} (rank {run.ctx.rank})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)

    CheckpointCallback.on_step_end = save_then_die


def pop_option(argv: list[str], name: str) -> str | None:
    if name not in argv:
        return None
    at = argv.index(name)
    value = argv[at + 1]
    del argv[at : at + 2]
    return value


if __name__ == "__main__":
    argv = sys.argv[1:]
    kill_step = pop_option(argv, "--kill-after-step")
    if kill_step is not None:
        kill_after_step(int(kill_step))
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        skip_deepspeed_shm_build()
    from clipdpo.train.__main__ import main

    raise SystemExit(main(argv))
