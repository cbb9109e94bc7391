"""python -m clipdpo.filter --input SCORES_URI --output PAIRS_URI [--config F] [--set k=v] [--shard i/n]"""

from __future__ import annotations

from clipdpo.filter import FilterConfig, run
from clipdpo.stage import sharded_main


def main(argv: list[str] | None = None) -> int:
    return sharded_main(
        run, FilterConfig, argv, prog="python -m clipdpo.filter", doc=__doc__, input_help="scores artifact URI"
    )


if __name__ == "__main__":
    raise SystemExit(main())
