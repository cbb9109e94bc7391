"""python -m clipdpo.generate --input IMAGES_URI --output CANDIDATES_URI [--config F] [--set k=v] [--shard i/n]"""

from __future__ import annotations

from clipdpo.generate import GenerateConfig, run
from clipdpo.stage import build_parser, load_config


def main(argv: list[str] | None = None) -> int:
    args = build_parser("python -m clipdpo.generate", __doc__, "images artifact URI").parse_args(argv)
    if (cfg := load_config(GenerateConfig, args)) is not None:
        run(cfg, args.input, args.output, shard=args.shard, finalize=args.finalize, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
