"""python -m clipdpo.ingest --source DIR|s3://PREFIX|builtin:demo --output IMAGES_URI

Packs image files into Parquet shards of `--shard-size` images. Undecodable files are
reported by name and left out; the run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from clipdpo import config as config_lib
from clipdpo.artifacts import ArtifactWriter, shard_name
from clipdpo.ingest.sources import list_sources, read_source
from clipdpo.schemas import IMAGES
from clipdpo.score.scorer import decode_image
from clipdpo.stage import build_parser, entry_point, load_config, print_summary, run_shards
from clipdpo.storage import Storage

log = logging.getLogger("clipdpo.ingest")


@dataclass(frozen=True)
class IngestConfig:
    source: str = "builtin:demo"
    source_name: str = "local"
    shard_size: int = 1000


def run(argv: list[str] | None = None) -> dict:
    parser = build_parser("python -m clipdpo.ingest", __doc__, None)
    parser.add_argument("--source", help="folder, s3:// prefix of image files, or builtin:demo")
    args = parser.parse_args(argv)
    storage = Storage()
    cfg = load_config(IngestConfig, args, storage, [f"source={args.source}"] if args.source else [])
    if cfg is None:
        return {}
    writer = ArtifactWriter(storage, args.output, "images", config_lib.to_dict(cfg), [], overwrite=args.overwrite)

    # Listing is cheap; bytes are read shard by shard, so memory holds one shard of images.
    refs = [] if writer.is_complete() else list_sources(storage, cfg.source, cfg.source_name)
    by_name = {shard_name(i // cfg.shard_size): refs[i : i + cfg.shard_size] for i in range(0, len(refs), cfg.shard_size)}
    names = list(by_name)

    def process(name: str):
        rows, bad = [], []
        for item in by_name[name]:
            try:
                data = read_source(storage, item)
                image = decode_image(data)
            except Exception as err:
                log.warning("%s: not a readable image, skipped (%s)", item.uri, err)
                bad.append(item.uri)
                continue
            rows.append({"image_id": item.image_id, "source": item.source, "uri": item.uri, "image": data,
                         "width": image.width, "height": image.height})
        stats = {"images": len(rows), "images_failed": len(bad), "failed_uris": bad[:20]}
        return pa.Table.from_pylist(rows, schema=IMAGES), stats

    result = run_shards(writer, names, process, args.shard, finalize_only=args.finalize)
    print_summary("ingest", result, {"output": writer.uri})
    return result.manifest.stats if result.manifest else {}


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
