"""python -m clipdpo.train --input PAIRS_URI --output MODEL_URI [--config F] [--set key=value ...]

DPO fine-tuning of a LLaVA-style model on a pairs artifact. One process, or many under torchrun:
  torchrun --nnodes N --nproc-per-node G -m clipdpo.train --input ... --output ... --config s3://.../train.json
Defaults are the paper's (lr 5e-7 cosine, warm-up 0.01, beta 0.1, global batch 256, 1 epoch).
Training is one job: --shard and --finalize do not apply.
"""

from __future__ import annotations

import json

from clipdpo.stage import build_parser, entry_point, load_config
from clipdpo.storage import Storage
from clipdpo.train.config import TrainConfig


def cli(argv: list[str] | None = None) -> dict:
    parser = build_parser("python -m clipdpo.train", __doc__, "pairs artifact URI")
    args = parser.parse_args(argv)
    if args.shard.count != 1 or args.finalize:
        parser.error("train is one job (many processes under torchrun): --shard and --finalize do not apply")
    cfg = load_config(TrainConfig, args, Storage())  # --config may be an s3:// URI
    if cfg is None:
        return {}
    from clipdpo.train import run

    summary = run(cfg, args.input, args.output, overwrite=args.overwrite)
    print(json.dumps({"stage": "train", "model": summary["model"], "steps": summary["steps"],
                      "final": summary["final"], "data": summary["data"]}, sort_keys=True), flush=True)
    return summary


main = entry_point(cli)


if __name__ == "__main__":
    raise SystemExit(main())
