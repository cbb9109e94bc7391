"""python -m clipdpo.ingest --source DIR|s3://PREFIX|builtin:demo --output IMAGES_URI

Packs image files into Parquet shards of `shard_size` images (`--set shard_size=N`). Files that
do not decode as images are counted, named in the manifest stats (`failed_uris`) and left out;
files without an image extension likewise (`not_image_uris`); the run goes on. Image ids are the
path below the source, extension kept (see `sources.image_id_for`).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipdpo import config as config_lib
from clipdpo.artifacts import ArtifactWriter, check_not_inside, shard_name
from clipdpo.ingest.pack import pack_shard
from clipdpo.ingest.sources import BUILTIN_DEMO, list_sources
from clipdpo.stage import build_parser, entry_point, load_config, print_summary, run_shards
from clipdpo.storage import Storage


@dataclass(frozen=True)
class IngestConfig:
    source: str = ""  # required: a folder, an s3:// prefix, or builtin:demo
    source_name: str = "local"
    shard_size: int = 1000

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


def run(argv: list[str] | None = None) -> dict:
    parser = build_parser("python -m clipdpo.ingest", __doc__, None)
    parser.add_argument("--source", help=f"folder or s3:// prefix of image files, or {BUILTIN_DEMO} (10 demo photos)")
    args = parser.parse_args(argv)
    storage = Storage()
    cfg = load_config(IngestConfig, args, storage, [f"source={args.source}"] if args.source else [])
    if cfg is None:
        return {}
    check_not_inside(args.output, cfg.source)
    # The listing (names, sizes, versions) is part of the fingerprint: a changed folder re-ingests.
    # Listing is cheap; bytes are read shard by shard, so memory holds one shard of images.
    listing = list_sources(storage, cfg.source, cfg.source_name)
    writer = ArtifactWriter(storage, args.output, "images", config_lib.to_dict(cfg), [], overwrite=args.overwrite,
                            input_fingerprints=[listing.fingerprint])
    refs = listing.images
    by_name = {shard_name(i // cfg.shard_size): refs[i : i + cfg.shard_size] for i in range(0, len(refs), cfg.shard_size)}
    first = shard_name(0)

    def process(name: str):
        # Files skipped by name are reported once, with the first shard.
        return pack_shard(storage, by_name[name], listing.not_images if name == first else [])

    result = run_shards(writer, list(by_name), process, args.shard, finalize_only=args.finalize)
    print_summary("ingest", result, {"output": writer.uri})
    return result.manifest.stats if result.manifest else {}


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
