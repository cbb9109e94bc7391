"""Images as users have them: every mode to RGB against hand-made pixels, EXIF orientation, one decoder for all."""

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from clipdpo.images import Decoding, decode_image, to_rgb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _row(mode: str, values, dtype) -> Image.Image:
    """A one-row image of `values` in `mode` (16-bit and 32-bit modes from raw bytes, as a file holds them)."""
    array = np.array([values], dtype=dtype)
    return Image.frombytes(mode, (len(values), 1), array.tobytes())


def _palette(entries, indices, **info) -> Image.Image:
    image = Image.new("P", (len(indices), 1))
    image.putpalette([channel for rgb in entries for channel in rgb])
    image.putdata(indices)
    image.info.update(info)
    return image


def _grey(values):
    return [(v, v, v) for v in values]


# mode -> (the file a user has, the RGB pixels they see): expected values worked out by hand in the comments.
# 16-bit: v / 257 rounded (128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 32896 -> 128, 65535 -> 255).
# On white: c * a / 255 + 255 * (255 - a) / 255 (a = 128: c = 0 -> 127, c = 255 -> 255).
CASES = {
    "I;16 PNG": (_encoded(_row("I;16", [0, 128, 129, 257, 32896, 65535], "<u2"), "PNG"), _grey([0, 0, 1, 1, 128, 255])),
    "I;16B TIFF": (
        _encoded(_row("I;16B", [0, 128, 129, 257, 32896, 65535], ">u2"), "TIFF"),
        _grey([0, 0, 1, 1, 128, 255]),
    ),
    "I (32-bit) TIFF, out of range clipped": (
        _encoded(_row("I", [-5, 0, 257, 65535, 70000], "<i4"), "TIFF"),
        _grey([0, 0, 1, 255, 255]),
    ),
    "I;16 PNG with a transparent grey": (
        _encoded(_row("I;16", [0, 257, 32896], "<u2"), "PNG", transparency=257),
        _grey([0, 255, 128]),
    ),
    "F TIFF in 0..1": (_encoded(_row("F", [0.0, 0.2, 1.0], "<f4"), "TIFF"), _grey([0, 51, 255])),
    "F TIFF in 0..255, NaN": (_encoded(_row("F", [0.0, 100.4, 300.0, np.nan], "<f4"), "TIFF"), _grey([0, 100, 255, 0])),
    "1 PNG": (_encoded(Image.frombytes("1", (2, 1), bytes([0b01000000])), "PNG"), _grey([0, 255])),  # bits, MSB first
    "L PNG": (_encoded(_row("L", [0, 77, 255], "u1"), "PNG"), _grey([0, 77, 255])),
    "LA PNG on white": (
        _encoded(Image.frombytes("LA", (3, 1), bytes([0, 0, 0, 255, 0, 128])), "PNG"),
        _grey([255, 0, 127]),
    ),
    "P PNG, one index transparent": (
        _encoded(_palette([(255, 0, 0), (0, 0, 255)], [0, 1]), "PNG", transparency=1),
        [(255, 0, 0), (255, 255, 255)],
    ),
    "P PNG, palette alpha": (
        _encoded(_palette([(255, 0, 0), (0, 0, 0)], [0, 1]), "PNG", transparency=bytes([128, 255])),
        [(255, 127, 127), (0, 0, 0)],
    ),
    "P GIF, one index transparent": (
        _encoded(_palette([(255, 0, 0), (0, 0, 255)], [0, 1]), "GIF", transparency=1),
        [(255, 0, 0), (255, 255, 255)],
    ),
    "RGBA PNG on white": (
        _encoded(Image.frombytes("RGBA", (3, 1), bytes([0, 0, 255, 0, 0, 0, 255, 128, 10, 20, 30, 255])), "PNG"),
        [(255, 255, 255), (127, 127, 255), (10, 20, 30)],
    ),
    "RGB PNG with a transparent colour": (
        _encoded(Image.frombytes("RGB", (2, 1), bytes([0, 255, 0, 1, 2, 3])), "PNG", transparency=(0, 255, 0)),
        [(255, 255, 255), (1, 2, 3)],
    ),
    # CMYK, no colour management: R = (255 - C)(255 - K) / 255 (C = 128, K = 128: 127 * 127 / 255 = 63.25 -> 63)
    "CMYK TIFF": (
        _encoded(Image.frombytes("CMYK", (3, 1), bytes([255, 0, 0, 0, 0, 0, 0, 128, 128, 0, 0, 128])), "TIFF"),
        [(0, 255, 255), (127, 127, 127), (63, 127, 127)],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_mode_decodes_to_the_rgb_a_viewer_shows(case):
    data, expected = CASES[case]
    image = decode_image(data)
    assert image.mode == "RGB"
    got = np.asarray(image).reshape(-1, 3).astype(int)
    assert np.abs(got - np.array(expected)).max() <= 1, f"{case}: {got.tolist()} != {expected}"


def test_a_16_bit_gradient_spans_black_to_white_rather_than_white():
    gradient = np.linspace(0, 65535, 1024).round().astype("<u2").reshape(4, 256)
    image = decode_image(_encoded(Image.frombytes("I;16", (256, 4), gradient.tobytes()), "PNG"))
    grey = np.asarray(image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and abs(grey.mean() - 127.5) < 0.5
    assert (np.diff(grey.reshape(-1)[:256].astype(int)) >= 0).all()  # still a ramp


@pytest.mark.parametrize(
    "mode,pixel,expected",
    [
        ("PA", (1, 128), (255, 127, 127)),  # palette entry 1 is red; half transparent
        ("RGBa", (100, 0, 0, 128), (227, 127, 127)),  # premultiplied: c * a / 255 is stored (100), + 255 * 127 / 255
    ],
)
def test_in_memory_alpha_modes_go_on_white(mode, pixel, expected):
    """Modes no file format stores, which a library hands over as a PIL image."""
    image = Image.new(mode, (1, 1))
    if mode == "PA":
        image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((0, 0), pixel)
    got = to_rgb(image).getpixel((0, 0))
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected)), (mode, got, expected)


def _sideways_photo(orientation: int, fmt: str = "JPEG") -> bytes:
    """A 40x20 photo stored sideways, left half red, right half blue, with the EXIF tag that says how to turn it."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encoded(image, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation,top,bottom", [(6, "red", "blue"), (8, "blue", "red")])
def test_exif_orientation_is_applied_at_decode(orientation, top, bottom):
    """6: turn 90 degrees clockwise to view (the stored left side ends on top); 8: anticlockwise."""
    colour = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    image = decode_image(_sideways_photo(orientation))
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[5, 10] - colour[top]).max() < 40 and np.abs(pixels[35, 10] - colour[bottom]).max() < 40
    assert decode_image(_sideways_photo(1)).size == (40, 20)  # upright already: left as stored


def test_every_stage_decodes_through_the_one_decoder():
    """No stage opens image bytes itself: they all call clipdpo.images (orientation and modes in one place).
    Allowed: images.py itself, and the demo photos (which draw images). The world is its own package."""
    opens = re.compile(r"Image\.open\(|\.convert\(\s*['\"]RGB['\"]\s*\)")
    offenders = []
    for folder, _, names in os.walk(os.path.join(ROOT, "src", "clipdpo")):
        relative = os.path.relpath(folder, os.path.join(ROOT, "src", "clipdpo"))
        if relative.split(os.sep)[0] == "demo":
            continue
        for name in names:
            if not name.endswith(".py") or (relative, name) == (".", "images.py"):
                continue
            path = os.path.join(folder, name)
            for number, line in enumerate(open(path, encoding="utf-8"), 1):
                if opens.search(line):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_decoding_records_failures_and_refuses_a_decompression_bomb():
    bomb = _encoded(Image.new("1", (20000, 20000)), "PNG")  # 400 M pixels: more than 2 x MAX_IMAGE_PIXELS
    assert len(bomb) < 200_000  # small on disk, 1.2 GB as RGB
    decoding = Decoding(missing="gone")
    got = list(
        decoding.each(
            [
                ("ok", _encoded(Image.new("RGB", (3, 2)), "PNG")),
                ("bomb", bomb),
                ("junk", b"\xff\xd8 not a jpeg"),
                ("none", None),
            ]
        )
    )
    assert [key for key, _ in got] == ["ok"] and decoding.decoded == 1
    assert list(decoding.failed) == ["bomb", "junk", "none"] and decoding.failed["none"] == "gone"
    assert "decompression bomb" in decoding.failed["bomb"]


def test_running_out_of_memory_is_not_a_skipped_image(monkeypatch):
    """A MemoryError is the machine's, not the file's: counting it as undecodable would drop a good image for good."""
    from clipdpo import images

    def exhausted(data):
        raise MemoryError

    monkeypatch.setattr(images, "decode_image", exhausted)
    decoding = Decoding()
    with pytest.raises(MemoryError):
        list(decoding.each([("big", b"bytes")]))
    assert decoding.failed == {}
