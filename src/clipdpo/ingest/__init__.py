"""ingest: image files (folder, S3 prefix or the built-in demo set) into an images artifact.

`run(cfg, source, output, ...)` packs the files into Parquet shards of `shard_size` images.
Undecodable files, files without an image extension, and what the listing could not take (folders it
cannot open, FIFOs, broken links: `sources.Listing.not_files`) are counted and named in the manifest stats
and left out; the run goes on. A file that cannot be *read* (permission, I/O, an S3 error) is not a fact
about the data: it fails its shard, which is not written, so the next run retries it. Image ids are the
path below the source, extension kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import pyarrow as pa

from clipdpo import config as config_lib
from clipdpo.artifacts import ArtifactWriter, check_not_inside, shard_name
from clipdpo.images import Decoding
from clipdpo.ingest.sources import SourceReadError, SourceRef, list_sources, read_source
from clipdpo.schemas import IMAGES
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage, StorageError


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


def _read(storage: Storage, item: SourceRef) -> bytes:
    """The file's bytes; a read that fails raises `SourceReadError`, never a skip: the failure is the storage's
    (permission, I/O, S3), and a skip would be permanent, since the listing and so the fingerprint are unchanged."""
    try:
        return read_source(storage, item)
    except (StorageError, OSError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SourceReadError(
            f"{item.uri}: cannot be read ({why}); its shard was not written: fix the file "
            "(or remove it) and rerun, which retries it"
        ) from err


def ingest_shard(
    storage: Storage, refs: list[SourceRef], not_images: Sequence[str] = (), not_files: Sequence[str] = ()
) -> tuple[pa.Table, dict]:
    """One shard of images: every decodable file with its size; the undecodable ones by URI, and `not_images`
    (files skipped by name) and `not_files` (listing entries that are not files) in the stats.

    Each image is decoded (to check it and measure it) and dropped before the next: memory holds the shard's
    encoded bytes and one decoded image."""
    by_uri = {item.uri: item for item in refs}
    data: dict[str, bytes] = {}

    def read_each():
        for item in refs:
            data[item.uri] = _read(storage, item)
            yield item.uri, data[item.uri]

    rows, decoding = [], Decoding()
    for uri, image in decoding.each(read_each()):
        item = by_uri[uri]
        rows.append(
            {
                "image_id": item.image_id,
                "source": item.source,
                "uri": uri,
                "image": data[uri],
                "width": image.width,
                "height": image.height,
            }
        )
        del image  # not alive while the next one decodes
    bad = list(decoding.failed)
    stats = {
        "images": len(rows),
        "images_failed": len(bad),
        "failed_uris": bad[:MAX_LISTED],
        "not_images": len(not_images),
        "not_image_uris": list(not_images)[:MAX_LISTED],
        "not_files": len(not_files),
        "not_file_uris": list(not_files)[:MAX_LISTED],
    }
    return pa.Table.from_pylist(rows, schema=IMAGES), stats


def run(
    cfg: IngestConfig,
    source: str | None,
    output: str,
    *,
    shard: ShardSpec = ShardSpec(),
    finalize: bool = False,
    overwrite: bool = False,
    storage: Storage | None = None,
) -> dict:
    """Pack the images at `source` (None: `cfg.source`) into the images artifact `output`; its stats."""
    cfg = replace(cfg, source=source) if source else cfg
    storage = storage or Storage()
    check_not_inside(output, cfg.source)
    # The listing (names, sizes, versions) is part of the fingerprint: a changed folder re-ingests.
    # Listing is cheap; bytes are read shard by shard, so memory holds one shard of images.
    listing = list_sources(storage, cfg.source, cfg.source_name)
    writer = ArtifactWriter(
        storage,
        output,
        "images",
        config_lib.to_dict(cfg),
        [],
        overwrite=overwrite,
        input_fingerprints=[listing.fingerprint],
    )
    refs = listing.images
    by_name = {
        shard_name(i // cfg.shard_size): refs[i : i + cfg.shard_size] for i in range(0, len(refs), cfg.shard_size)
    }
    first = shard_name(0)

    def process(name: str) -> tuple[pa.Table, dict]:
        # What the listing skipped is reported once, with the first shard.
        if name == first:
            return ingest_shard(storage, by_name[name], listing.not_images, listing.not_files)
        return ingest_shard(storage, by_name[name])

    result = run_shards(writer, list(by_name), process, shard, finalize_only=finalize)
    return report("ingest", result, {"output": writer.uri})
