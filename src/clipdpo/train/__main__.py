"""python -m clipdpo.train --input PAIRS_URI --output MODEL_URI [--config F] [--set key=value ...]

DPO fine-tuning of a LLaVA-style model on a pairs artifact. One process, or many under torchrun:
  torchrun --nnodes N --nproc-per-node G -m clipdpo.train --input ... --output ...
Defaults are the paper's (lr 5e-7 cosine, warm-up 0.01, beta 0.1, global batch 256, 1 epoch).
"""

from __future__ import annotations

import argparse
import json

from clipdpo.stage import entry_point, load_config
from clipdpo.storage import Storage
from clipdpo.training.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipdpo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="pairs artifact URI")
    parser.add_argument("--output", required=True, help="where the model, metrics and checkpoints go")
    parser.add_argument("--config", help="JSON config file (path or s3:// URI)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set loss_type=ipo (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished model made from other inputs")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config, then exit")
    return parser


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    storage = Storage()
    cfg = load_config(TrainConfig, args, storage)
    if cfg is None:
        return {}
    from clipdpo.training.loop import train  # torch and transformers load only past argument checks

    summary = train(cfg, args.input, args.output, overwrite=args.overwrite, storage=storage)
    if summary:
        print(json.dumps({"stage": "train", "model": summary["model"], "steps": summary["steps"],
                          "final": summary["final"], "data": summary["data"]}, sort_keys=True), flush=True)
    return summary


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
