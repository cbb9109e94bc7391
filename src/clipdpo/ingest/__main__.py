"""python -m clipdpo.ingest --source DIR|s3://PREFIX|builtin:demo --output IMAGES_URI [--config F] [--set k=v]

Packs image files into Parquet shards of `shard_size` images. Undecodable files are
reported by name and left out; the run goes on.
"""

from __future__ import annotations

from clipdpo.ingest import IngestConfig, run
from clipdpo.stage import build_parser, load_config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m clipdpo.ingest", __doc__, None)
    parser.add_argument("--source", help="folder, s3:// prefix of image files, or builtin:demo (default: the config's)")
    args = parser.parse_args(argv)
    if (cfg := load_config(IngestConfig, args)) is not None:
        run(cfg, args.source, args.output, shard=args.shard, finalize=args.finalize, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
