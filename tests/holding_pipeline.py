"""`python -m pipelines.run` with a stand-in for the clipdpo pipeline whose steps hold child processes:

    python tests/holding_pipeline.py SECONDS PIPELINE_RUN_ARGV...

The stand-in runs three ParallelFor iterations, two at a time (kfp's local pool); each is a step that starts
`sleep SECONDS` and waits for it, so the run holds a tree of processes (kfp's `sh`, the executor's `python3`,
`sleep`) with one iteration queued, for as long as a test wants. Everything else (the command line, run_local,
kfp's SubprocessRunner) is the product's. The swap happens here, in the test's process only.
"""

# No `from __future__ import annotations`: kfp reads the component signatures' real types.
import sys

from kfp import dsl

import pipelines.clipdpo_pipeline
from pipelines.run import main
from pipelines.settings import SETTINGS

ITERATIONS = 3  # one more than kfp's local pool runs at a time: one waits in its queue


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def hold(seconds: str, item: int) -> str:
    import subprocess

    subprocess.run(["sleep", seconds], check=True)
    return f"{item} held {seconds}s"


@dsl.pipeline
def holding(seconds: str):
    with dsl.ParallelFor(list(range(ITERATIONS))) as item:
        hold(seconds=seconds, item=item)


if __name__ == "__main__":
    seconds, *argv = sys.argv[1:]
    # run_local looks the pipeline up when it runs it, with the clipdpo pipeline's arguments: this one needs none
    pipelines.clipdpo_pipeline.build_pipeline = lambda values, rounds=1: lambda **_arguments: holding(seconds=seconds)
    raise SystemExit(main(argv))
