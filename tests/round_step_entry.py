"""A round's train step as a local pipeline run runs it, stopped inside its training:

    python tests/round_step_entry.py STEP RUN_ROOT TRAIN_CONFIG_JSON PAIRS

clipdpo.steps.train_step with the local launcher (the train component's call: training in the step's own process),
sent SIGTERM right after optimizer step STEP's checkpoint logic, as a stopped local run ends its running step
(pipelines/local_stop.py). The switch is tests/train_entry.py's, in this test process only.
"""

from __future__ import annotations

import signal
import sys

from train_entry import kill_after_step

if __name__ == "__main__":
    step, run_root, config_json, pairs = sys.argv[1:]
    kill_after_step(int(step), signal.SIGTERM)
    from clipdpo import steps

    steps.train_step(run_root, config_json, launcher="local", pairs_uri=pairs)
    raise SystemExit(f"the train step ran to its end: no step {step} to stop after")
