"""python -m clipdpo.filter --input SCORES_URI --output PAIRS_URI [--config F] [--set k=v] [--shard i/n]"""

from __future__ import annotations

from clipdpo.filter import FilterConfig, run
from clipdpo.stage import build_parser, load_config


def main(argv: list[str] | None = None) -> int:
    args = build_parser("python -m clipdpo.filter", __doc__, "scores artifact URI").parse_args(argv)
    if (cfg := load_config(FilterConfig, args)) is not None:
        run(cfg, args.input, args.output, shard=args.shard, finalize=args.finalize, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
