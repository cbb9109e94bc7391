"""What the training benches share: a tiny LLaVA and pairs in a scratch folder, and one timed training run
read back from the run's own metrics.jsonl (bench_train.py, bench_povid.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # pairs_fixture


@contextlib.contextmanager
def tiny_llava_and_pairs(name: str, n_pairs: int, n_shards: int):
    """(scratch folder, tiny LLaVA path, pairs URI), all removed afterwards."""
    from pairs_fixture import write_pairs

    from clipdpo.demo.models import build_tiny_llava

    work = Path(tempfile.mkdtemp(prefix=f"clipdpo-bench-{name}-"))
    try:
        model = build_tiny_llava(str(work / "tiny-llava"))
        yield work, model, write_pairs(str(work / "data"), n_pairs=n_pairs, n_shards=n_shards)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed_train(model: str, pairs: str, output: str, batch: int, max_length: int, **settings) -> dict:
    """One `train.run` with one micro-batch per step, no warm-up and no checkpoints; `settings`: the
    other TrainConfig fields. Loop seconds are the steps' own; total (wall and CPU) seconds include index,
    reference pass and save."""
    from clipdpo import config as config_lib
    from clipdpo import train
    from clipdpo.storage import Storage, join
    from clipdpo.train.config import TrainConfig

    # from_dict, as a config file is read: nested settings (`povid`) as dicts, unknown keys refused
    cfg = config_lib.from_dict(
        TrainConfig,
        dict(
            model=model,
            global_batch_size=batch,
            per_device_batch_size=batch,
            max_length=max_length,
            warmup_ratio=0.0,
            save_steps=10**6,
            **settings,
        ),
    )
    started, cpu_started = time.monotonic(), time.process_time()
    summary = train.run(cfg, pairs, output)
    total, cpu = time.monotonic() - started, time.process_time() - cpu_started
    rows = [json.loads(line) for line in Storage().read_bytes(join(output, "metrics.jsonl")).decode().splitlines()]
    samples, loop_seconds = batch * len(rows), sum(r["seconds"] for r in rows)
    return {
        "samples": samples,
        "steps": len(rows),
        "loop_seconds": loop_seconds,
        "total_seconds": total,
        "total_cpu_seconds": cpu,  # the shared machine's load moves few-second wall times by 2x
        "samples_per_s_loop": samples / loop_seconds,
        "samples_per_s_total": samples / total,
        "final_loss": rows[-1]["loss"],
        "data": summary["data"],
    }
