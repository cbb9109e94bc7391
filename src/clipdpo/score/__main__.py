"""python -m clipdpo.score --input CANDIDATES_URI --output SCORES_URI [--config F] [--set k=v] [--shard i/n]"""

from __future__ import annotations

from clipdpo.score import run
from clipdpo.score.scorer import ScorerConfig
from clipdpo.stage import sharded_main


def main(argv: list[str] | None = None) -> int:
    return sharded_main(
        run, ScorerConfig, argv, prog="python -m clipdpo.score", doc=__doc__, input_help="candidates artifact URI"
    )


if __name__ == "__main__":
    raise SystemExit(main())
