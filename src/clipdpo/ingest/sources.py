"""Where images come from: a folder or S3 prefix of image files, or the built-in demo set."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from clipdpo.storage import Storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Real photos that ship inside scikit-image (public domain or CC0 per its data README).
DEMO_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "page", "text", "camera", "coins", "horse")


@dataclass(frozen=True)
class SourceRef:
    """An image to ingest; its bytes are read only when its shard is written."""

    image_id: str
    source: str
    uri: str


def _png_bytes(array) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _skimage_data():
    try:
        from skimage import data
    except ImportError as err:
        raise RuntimeError("the built-in demo set needs scikit-image (pip install 'clipdpo[dev]')") from err
    return data


def image_id_for(root: str, uri: str) -> str:
    """Stable id from the path below the root: same file, same id, whatever the machine."""
    relative = uri[len(root.rstrip("/")) + 1 :]
    return os.path.splitext(relative)[0].replace("/", "__")


def list_sources(storage: Storage, root: str, source_name: str) -> list[SourceRef]:
    if root == "builtin:demo":
        return [SourceRef(f"demo-{name}", "skimage", f"skimage://data/{name}") for name in DEMO_IMAGES]
    uris = [uri for uri in storage.list(root) if uri.lower().endswith(IMAGE_SUFFIXES)]
    if not uris:
        raise FileNotFoundError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return [SourceRef(image_id_for(root, uri), source_name, uri) for uri in uris]


def read_source(storage: Storage, ref: SourceRef) -> bytes:
    if ref.uri.startswith("skimage://data/"):
        return _png_bytes(getattr(_skimage_data(), ref.uri.rsplit("/", 1)[1])())
    return storage.read_bytes(ref.uri)
