"""Decoding stored image bytes: one decoder for every stage that opens images (ingest, generate, score, train,
evaluate, the report), so that each sees an image the way its owner does on screen.

`decode_image` applies the EXIF orientation (a phone photo taken in portrait is stored sideways with a tag
saying so) and converts every mode to 8-bit RGB by `to_rgb`'s table:

    RGB, L, 1, P, CMYK, YCbCr, LAB, HSV  Pillow's conversion (CMYK without colour management:
                                         R = (255 - C)(255 - K) / 255, likewise G from M and B from Y)
    I;16, I;16B, I;16L, I;16N, I          16-bit grey: value / 257 rounded (0..65535 -> 0..255); `I` (32-bit)
                                         is read as 16-bit data, values outside 0..65535 clipped
    F                                    float grey: 0..1 scaled to 0..255 when every value lies in 0..1
                                         (the float-image convention), else taken as 0..255; clipped, NaN = 0
    RGBA, LA, PA, RGBa, or a
    `transparency` entry (P, L, RGB,
    16-bit grey)                         composited on white (BACKGROUND), as a viewer shows it

A corrupt image is a fact about the data, not a reason to stop a shard: `Decoding.each` decodes one image at
a time (memory holds the images the caller keeps, not the shard), records each failure with its reason and
logs the first few. Pillow's decompression-bomb check (more than 2 x Image.MAX_IMAGE_PIXELS pixels) stays on:
such a file fails to decode like a corrupt one.
"""

from __future__ import annotations

import io
import logging
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("clipdpo.images")

LOGGED_FAILURES = 20  # a shard of broken files should not flood the log
BACKGROUND = (255, 255, 255)  # under transparent pixels: the white page a browser or viewer shows
SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa")


def decode_image(data: bytes) -> Image.Image:
    """The image in `data` (any format PIL reads), fully loaded, upright (EXIF orientation applied), as RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an image that is already upright
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB by the module's table (the same object when it is already plain RGB)."""
    if image.mode in SIXTEEN_BIT_GREY:
        image = _sixteen_bit_to_8(image)
    elif image.mode == "F":
        image = _float_to_8(image)
    if image.mode in WITH_ALPHA or "transparency" in image.info:
        return _on_background(image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    """L (or LA where a `transparency` grey value marks transparent pixels): 0..65535 -> 0..255, v / 257 rounded."""
    values = np.asarray(image)
    grey = ((np.clip(values, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    return Image.fromarray(grey, "L")


def _float_to_8(image: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    scale = 255.0 if values.size and values.min() >= 0.0 and values.max() <= 1.0 else 1.0
    return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L")


def _on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def viewable_bytes(data: bytes) -> bytes:
    """`data` itself where other readers see what `decode_image` sees, else a PNG of `decode_image`'s pixels.

    For images handed to other tools (the TRL export): `datasets` applies the EXIF orientation and a transformers
    processor composites alpha on white as `to_rgb` does, but both turn 16-bit and float images white with
    Pillow's plain `convert("RGB")`. Only the header is read unless the image must be re-encoded; bytes that
    do not open as an image are passed on as they are (checking images is ingest's job, not the export's).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in SIXTEEN_BIT_GREY and image.mode != "F":
                return data
    except Exception:  # PIL raises many types for what it cannot read
        return data
    buffer = io.BytesIO()
    decode_image(data).save(buffer, format="PNG")
    return buffer.getvalue()


class Decoding:
    """Decodes (key, bytes) pairs one at a time; `failed` holds key -> why it was left out, in input order.

    None bytes count as a failure with reason `missing`.
    """

    def __init__(self, missing: str = "no image bytes"):
        self.missing = missing
        self.failed: dict[str, str] = {}
        self.decoded = 0

    def each(self, items: Iterable[tuple[str, bytes | None]]) -> Iterator[tuple[str, Image.Image]]:
        """(key, RGB image) for every pair that decodes, in input order; one decoded image alive at a time
        unless the caller keeps them."""
        for key, data in items:
            if data is None:
                self._fail(key, self.missing)
                continue
            try:
                image = decode_image(data)
            except MemoryError:  # the machine's, not the file's: a skip would drop a good image for good
                raise
            except Exception as err:  # PIL raises many types for corrupt data (and DecompressionBombError)
                self._fail(key, f"cannot decode: {err}")
                continue
            self.decoded += 1
            yield key, image
            del image  # not alive while the next one decodes
        if len(self.failed) > LOGGED_FAILURES:
            log.warning("... and %d more image(s) skipped", len(self.failed) - LOGGED_FAILURES)

    def _fail(self, key: str, reason: str) -> None:
        self.failed[key] = reason
        if len(self.failed) <= LOGGED_FAILURES:
            log.warning("image %s skipped: %s", key, reason)
