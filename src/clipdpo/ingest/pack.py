"""One images shard from a slice of the source listing: read, decode to check, count what fails."""

from __future__ import annotations

import io
import logging

import pyarrow as pa
from PIL import Image

from clipdpo.ingest.sources import SourceRef, read_source
from clipdpo.schemas import IMAGES
from clipdpo.storage import Storage

log = logging.getLogger("clipdpo.ingest")

# Lists in shard stats are examples for the manifest (sum_stats keeps 100 in all); counts are exact.
MAX_LISTED = 100


def image_size(data: bytes) -> tuple[int, int]:
    """Decode fully (a truncated file fails here, not in a later stage) and return (width, height).

    Not `score.scorer.decode_image`: that module imports torch, 2 s of start-up ingest never needs.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.width, image.height


def pack_shard(storage: Storage, refs: list[SourceRef], not_images: list[str] = ()) -> tuple[pa.Table, dict]:
    """Rows for the readable images of `refs`; `not_images` (files skipped by name) go into the stats."""
    rows, bad = [], []
    for item in refs:
        try:
            data = read_source(storage, item)
            width, height = image_size(data)
        except Exception as err:  # any undecodable file: reported by name, the run goes on
            log.warning("%s: not a readable image, skipped (%s)", item.uri, " ".join(str(err).split()))
            bad.append(item.uri)
            continue
        rows.append({"image_id": item.image_id, "source": item.source, "uri": item.uri, "image": data,
                     "width": width, "height": height})
    stats = {"images": len(rows), "images_failed": len(bad), "failed_uris": bad[:MAX_LISTED],
             "not_images": len(not_images), "not_image_uris": list(not_images)[:MAX_LISTED]}
    return pa.Table.from_pylist(rows, schema=IMAGES), stats
