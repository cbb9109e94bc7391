"""ingest: image files (folder, S3 prefix or the built-in demo set) into an images artifact.

`run(cfg, source, output, ...)` packs the files into Parquet shards of `shard_size` images.
Undecodable files are reported by name and left out; the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

from clipdpo import config as config_lib
from clipdpo.artifacts import ArtifactWriter, shard_name
from clipdpo.images import decode_all
from clipdpo.ingest.sources import SourceRef, list_sources, read_source
from clipdpo.schemas import IMAGES
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage


@dataclass(frozen=True)
class IngestConfig:
    source: str = "builtin:demo"
    source_name: str = "local"
    shard_size: int = 1000


def _read(storage: Storage, item: SourceRef) -> bytes | None:
    try:
        return read_source(storage, item)
    except Exception:  # an unreadable file is left out like an undecodable one
        return None


def ingest_shard(storage: Storage, refs: list[SourceRef]) -> tuple[pa.Table, dict]:
    """One shard of images: every readable, decodable file with its size; the others by URI."""
    data = {item.uri: _read(storage, item) for item in refs}
    decoded = decode_all(data.items(), missing="cannot be read")
    sizes = {uri: image.size for uri, image in decoded.images}
    rows = [{"image_id": item.image_id, "source": item.source, "uri": item.uri, "image": data[item.uri],
             "width": sizes[item.uri][0], "height": sizes[item.uri][1]} for item in refs if item.uri in sizes]
    bad = [item.uri for item in refs if item.uri in decoded.failed]
    stats = {"images": len(rows), "images_failed": len(bad), "failed_uris": bad[:20]}
    return pa.Table.from_pylist(rows, schema=IMAGES), stats


def run(cfg: IngestConfig, source: str | None, output: str, *, shard: ShardSpec = ShardSpec(),
        finalize: bool = False, overwrite: bool = False, storage: Storage | None = None) -> dict:
    """Pack the images at `source` (None: `cfg.source`) into the images artifact `output`; its stats."""
    cfg = replace(cfg, source=source) if source else cfg
    storage = storage or Storage()
    writer = ArtifactWriter(storage, output, "images", config_lib.to_dict(cfg), [], overwrite=overwrite)
    # Listing is cheap; bytes are read shard by shard, so memory holds one shard of images.
    refs = [] if writer.is_complete() else list_sources(storage, cfg.source, cfg.source_name)
    by_name = {shard_name(i // cfg.shard_size): refs[i : i + cfg.shard_size] for i in range(0, len(refs), cfg.shard_size)}
    result = run_shards(writer, list(by_name), lambda name: ingest_shard(storage, by_name[name]), shard,
                        finalize_only=finalize)
    return report("ingest", result, {"output": writer.uri})
