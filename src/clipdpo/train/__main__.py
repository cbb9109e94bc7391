"""python -m clipdpo.train --input PAIRS_URI --output MODEL_URI [--config F|s3://...] [--set key=value ...]

DPO fine-tuning of a LLaVA-style model on a pairs artifact. One process, or many under torchrun:
  torchrun --nnodes N --nproc-per-node G -m clipdpo.train --input ... --output ... --config s3://.../train.json
Defaults are the paper's (lr 5e-7 cosine, warm-up 0.01, beta 0.1, global batch 256, 1 epoch).
Training is one job (many processes under torchrun): it takes no --shard or --finalize.
"""

from __future__ import annotations

import argparse
import json

from clipdpo.stage import build_parser, run_cli
from clipdpo.train import run
from clipdpo.train.config import TrainConfig


def train(cfg: TrainConfig, args: argparse.Namespace) -> dict:
    """`run`, then the stage's summary line."""
    summary = run(cfg, args.input, args.output, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "stage": "train",
                "model": summary["model"],
                "steps": summary["steps"],
                "final": summary["final"],
                "data": summary["data"],
            },
            sort_keys=True,
        ),
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m clipdpo.train", __doc__, "pairs artifact URI", sharded=False)
    return run_cli(parser, TrainConfig, argv, train)


if __name__ == "__main__":
    raise SystemExit(main())
