"""`python -m clipdpo.train` as the tests launch it (script or under torchrun): the product's entry
point, plus what only a test needs, injected here so that none of it ships in `clipdpo`.

- DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op when its communication
  backend starts (about a minute on two idle cores, several under load, on every fresh machine).
  Only DeepSpeed's inference all-reduce uses it, never ZeRO training, so the tests skip the build.
"""

from __future__ import annotations

import os


def skip_deepspeed_shm_build() -> None:
    import importlib

    # not `import deepspeed.comm.torch as m`: that resolves the attribute `deepspeed.comm.torch`, the torch package
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None  # looked up at call time by TorchBackend.__init__


if __name__ == "__main__":
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        skip_deepspeed_shm_build()
    from clipdpo.train.__main__ import main

    raise SystemExit(main())
