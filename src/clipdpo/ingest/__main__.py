"""python -m clipdpo.ingest --source DIR|s3://PREFIX|builtin:demo --output IMAGES_URI [--config F] [--set k=v]

Packs image files into Parquet shards of `shard_size` images (`--set shard_size=N`). Files that
do not decode as images are counted, named in the manifest stats (`failed_uris`) and left out;
files without an image extension likewise (`not_image_uris`), and entries that are not readable
files: folders that cannot be opened, FIFOs, broken links (`not_file_uris`); the run goes on. A
file that cannot be read (permission, I/O, S3 error) stops the run with its name: its shard is not
written, and the rerun retries it. Image ids are the path below the source, extension kept (see
`sources.image_id_for`).
"""

from __future__ import annotations

from clipdpo.ingest import IngestConfig, run
from clipdpo.ingest.sources import BUILTIN_DEMO
from clipdpo.stage import add_config_flag, build_parser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m clipdpo.ingest", __doc__, None)
    add_config_flag(
        parser, "--source", "source", f"folder or s3:// prefix of image files, or {BUILTIN_DEMO} (demo photos)"
    )
    return run_cli(
        parser,
        IngestConfig,
        argv,
        lambda cfg, args: run(
            cfg, None, args.output, shard=args.shard, finalize=args.finalize, overwrite=args.overwrite
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
