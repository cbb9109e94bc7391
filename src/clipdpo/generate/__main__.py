"""python -m clipdpo.generate --input IMAGES_URI --output CANDIDATES_URI [--config F] [--set k=v] [--shard i/n]"""

from __future__ import annotations

from clipdpo.generate import GenerateConfig, run
from clipdpo.stage import sharded_main


def main(argv: list[str] | None = None) -> int:
    return sharded_main(
        run, GenerateConfig, argv, prog="python -m clipdpo.generate", doc=__doc__, input_help="images artifact URI"
    )


if __name__ == "__main__":
    raise SystemExit(main())
