"""The demo's photos: real ones that ship inside scikit-image (public domain or CC0 per its data README).

They are the images of `--source builtin:demo` (ingest reads them through `listing` and `read`) and of
the demo benchmarks (`benchmarks.write`). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io

SOURCE = "builtin:demo"  # the --source value that names this set
SOURCE_NAME = "skimage"  # the images table's `source` column for them
URI_PREFIX = "skimage://data/"
NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "page", "text", "camera", "coins", "horse")


def _array(name: str):
    try:
        from skimage import data
    except ImportError as err:
        raise RuntimeError("the built-in demo set needs scikit-image (pip install 'clipdpo[dev]')") from err
    return getattr(data, name)()


def _encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(name: str) -> bytes:
    """The photo as scikit-image holds it (grey ones stay grey), losslessly."""
    from PIL import Image

    return _encoded(Image.fromarray(_array(name)), "PNG")


def jpeg(name: str) -> bytes:
    """The photo in RGB as a JPEG, as the benchmarks' image folders hold their images."""
    from PIL import Image

    return _encoded(Image.fromarray(_array(name)).convert("RGB"), "JPEG", quality=90)


def listing() -> list[tuple[str, str]]:
    """(image id, URI) of each demo photo, in a fixed order."""
    return [(f"demo-{name}", URI_PREFIX + name) for name in NAMES]


def fingerprint() -> str:
    """Changes only when the set of photos does."""
    return hashlib.sha256(" ".join(NAMES).encode()).hexdigest()


def is_photo(uri: str) -> bool:
    return uri.startswith(URI_PREFIX)


def read(uri: str) -> bytes:
    """The PNG bytes of a URI from `listing`."""
    name = uri[len(URI_PREFIX) :]
    if name not in NAMES:
        raise ValueError(f"{uri}: not a demo photo (known: {', '.join(NAMES)})")
    return png(name)
