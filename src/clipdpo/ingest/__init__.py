"""ingest: image files (folder, S3 prefix or the built-in demo set) into an images artifact.

`run(cfg, source, output, ...)` packs the files into Parquet shards of `shard_size` images.
Undecodable files, and files without an image extension, are counted and named in the manifest
stats and left out; the run goes on. Image ids are the path below the source, extension kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

from clipdpo import config as config_lib
from clipdpo.artifacts import ArtifactWriter, check_not_inside, shard_name
from clipdpo.images import decode_all
from clipdpo.ingest.sources import SourceRef, list_sources, read_source
from clipdpo.schemas import IMAGES
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage


@dataclass(frozen=True)
class IngestConfig:
    source: str = ""  # required: a folder, an s3:// prefix, or builtin:demo
    source_name: str = "local"
    shard_size: int = 1000

    RANGES = {"shard_size": config_lib.AT_LEAST_1}

    def __post_init__(self):
        config_lib.check_ranges(self)

# Lists in shard stats are examples for the manifest (sum_stats keeps 100 in all); counts are exact.
MAX_LISTED = 100


def _read(storage: Storage, item: SourceRef) -> bytes | None:
    try:
        return read_source(storage, item)
    except Exception:  # an unreadable file is left out like an undecodable one
        return None


def ingest_shard(storage: Storage, refs: list[SourceRef], not_images: list[str] = ()) -> tuple[pa.Table, dict]:
    """One shard of images: every readable, decodable file with its size; the others by URI, and
    `not_images` (files skipped by name) in the stats."""
    data = {item.uri: _read(storage, item) for item in refs}
    decoded = decode_all(data.items(), missing="cannot be read")
    sizes = {uri: image.size for uri, image in decoded.images}
    rows = [{"image_id": item.image_id, "source": item.source, "uri": item.uri, "image": data[item.uri],
             "width": sizes[item.uri][0], "height": sizes[item.uri][1]} for item in refs if item.uri in sizes]
    bad = [item.uri for item in refs if item.uri in decoded.failed]
    stats = {"images": len(rows), "images_failed": len(bad), "failed_uris": bad[:MAX_LISTED],
             "not_images": len(not_images), "not_image_uris": list(not_images)[:MAX_LISTED]}
    return pa.Table.from_pylist(rows, schema=IMAGES), stats


def run(cfg: IngestConfig, source: str | None, output: str, *, shard: ShardSpec = ShardSpec(),
        finalize: bool = False, overwrite: bool = False, storage: Storage | None = None) -> dict:
    """Pack the images at `source` (None: `cfg.source`) into the images artifact `output`; its stats."""
    cfg = replace(cfg, source=source) if source else cfg
    storage = storage or Storage()
    check_not_inside(output, cfg.source)
    # The listing (names, sizes, versions) is part of the fingerprint: a changed folder re-ingests.
    # Listing is cheap; bytes are read shard by shard, so memory holds one shard of images.
    listing = list_sources(storage, cfg.source, cfg.source_name)
    writer = ArtifactWriter(storage, output, "images", config_lib.to_dict(cfg), [], overwrite=overwrite,
                            input_fingerprints=[listing.fingerprint])
    refs = listing.images
    by_name = {shard_name(i // cfg.shard_size): refs[i : i + cfg.shard_size] for i in range(0, len(refs), cfg.shard_size)}
    first = shard_name(0)

    def process(name: str) -> tuple[pa.Table, dict]:
        # Files skipped by name are reported once, with the first shard.
        return ingest_shard(storage, by_name[name], listing.not_images if name == first else [])

    result = run_shards(writer, list(by_name), process, shard, finalize_only=finalize)
    return report("ingest", result, {"output": writer.uri})
