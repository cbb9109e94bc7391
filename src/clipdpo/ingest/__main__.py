"""python -m clipdpo.ingest --source DIR|s3://PREFIX|builtin:demo --output IMAGES_URI [--config F] [--set k=v]

Packs image files into Parquet shards of `shard_size` images. Undecodable files are
reported by name and left out; the run goes on.
"""

from __future__ import annotations

from clipdpo.ingest import IngestConfig, run
from clipdpo.stage import add_config_flag, build_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m clipdpo.ingest", __doc__, None)
    add_config_flag(parser, "--source", "source", "folder, s3:// prefix of image files, or builtin:demo")
    return run_cli(parser, IngestConfig, argv, lambda cfg, args: run(
        cfg, None, args.output, shard=args.shard, finalize=args.finalize, overwrite=args.overwrite))


if __name__ == "__main__":
    raise SystemExit(main())
