"""Decoding stored image bytes: one helper for every stage that opens images (ingest, generate, score).

A corrupt image is a fact about the data, not a reason to stop a shard: `decode_all` decodes what it
can, keeps each failure with its reason, and logs the first few.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Iterable

from PIL import Image

log = logging.getLogger("clipdpo.images")

LOGGED_FAILURES = 20  # a shard of broken files should not flood the log


def decode_image(data: bytes) -> Image.Image:
    """The image in `data` (any format PIL reads), fully loaded, as RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


@dataclass
class Decoded:
    images: list[tuple[str, Image.Image]] = field(default_factory=list)  # (key, image), in input order
    failed: dict[str, str] = field(default_factory=dict)  # key -> why it was left out, in input order


def decode_all(items: Iterable[tuple[str, bytes | None]], missing: str = "no image bytes") -> Decoded:
    """Decode every (key, bytes) pair; None bytes count as a failure with reason `missing`."""
    out = Decoded()
    for key, data in items:
        if data is None:
            out.failed[key] = missing
            continue
        try:
            out.images.append((key, decode_image(data)))
        except Exception as err:  # PIL raises many types for corrupt data
            out.failed[key] = f"cannot decode: {err}"
    for key, reason in list(out.failed.items())[:LOGGED_FAILURES]:
        log.warning("image %s skipped: %s", key, reason)
    if len(out.failed) > LOGGED_FAILURES:
        log.warning("... and %d more image(s) skipped", len(out.failed) - LOGGED_FAILURES)
    return out
