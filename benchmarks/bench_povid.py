"""make bench (POVID part): training samples/s with on-policy noisy-image rejections (Eq. 5) vs without.

Same tiny LLaVA, pairs, batch and max length, one process on this machine's CPU, reference="model" in
every run (POVID needs a live reference: its noisy rejections change as the policy trains):
  dpo            DPO on the pairs' text rejections (POVID stage 1, or method=clipdpo)
  povid          stage 2 only: + the policy's teacher-forced answer on a noised image every step (one
                 gradient-free forward of n rows), scored by policy and reference (3n rows instead of 2n)
Results: bench-results/povid.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from train_timing import timed_train, tiny_llava_and_pairs

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARMS = {
    "dpo": dict(method="clipdpo", epochs=1),
    "povid": dict(method="povid", povid={"stage1_epochs": 0, "stage2_epochs": 1, "noisy_every": 1}),
}


def run_arm(model: str, pairs: str, output: str, batch: int, max_length: int, settings: dict) -> dict:
    return timed_train(model, pairs, output, batch, max_length, learning_rate=5e-6, reference="model", **settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    with tiny_llava_and_pairs("povid", args.pairs, n_shards=2) as (work, model, pairs):
        arms = {
            name: run_arm(model, pairs, str(work / name), args.batch, args.max_length, settings)
            for name, settings in ARMS.items()
        }
    ratio = arms["povid"]["samples_per_s_loop"] / arms["dpo"]["samples_per_s_loop"]
    result = {
        "pairs": args.pairs,
        "batch": args.batch,
        "max_length": args.max_length,
        "threads": args.threads,
        **arms,
        "povid_vs_dpo_loop": ratio,
    }
    print("| arm | steps | loop seconds | samples/s |\n|---|---|---|---|")
    for name, arm in arms.items():
        print(f"| {name} | {arm['steps']} | {arm['loop_seconds']:.2f} | {arm['samples_per_s_loop']:.1f} |")
    print(f"noisy-image rejections every step: {ratio:.2f}x the text-only loop's samples/s")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "povid.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
