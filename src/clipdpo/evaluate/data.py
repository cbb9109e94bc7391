"""Reading evaluation inputs (question files, image folders) with errors that name the file and field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from clipdpo.errors import UserError
from clipdpo.images import decode_image
from clipdpo.storage import NotFound, Storage, join

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class EvalInputError(ValueError, UserError):
    """An evaluation input is missing or not in the expected layout."""


@dataclass(frozen=True)
class Item:
    """One question (or one image to describe) of a benchmark, as read from its file."""

    id: str
    image: str  # URI of the image
    prompt: str
    fields: dict[str, Any] = field(default_factory=dict)  # the benchmark's own fields (answer, category...)


def read_text(storage: Storage, uri: str, what: str) -> str:
    try:
        return storage.read_bytes(uri).decode("utf-8")
    except NotFound:
        raise EvalInputError(f"{uri}: missing ({what})") from None


def read_jsonl(storage: Storage, uri: str, what: str) -> list[tuple[int, dict]]:
    """(line number, object) per non-empty line."""
    rows = []
    for number, line in enumerate(read_text(storage, uri, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalInputError(f"{uri}:{number}: not valid JSON ({err})") from err
        if not isinstance(row, dict):
            raise EvalInputError(f"{uri}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def require(row: dict, names: dict[str, type | tuple[type, ...]], where: str) -> None:
    for name, kind in names.items():
        if name not in row:
            raise EvalInputError(f"{where}: field {name!r} is missing")
        if not isinstance(row[name], kind) or isinstance(row[name], bool) and kind is not bool:
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise EvalInputError(f"{where}: field {name!r} should be {expected}, got {row[name]!r}")


def load_image(storage: Storage, uri: str, where: str) -> Image.Image:
    try:
        data = storage.read_bytes(uri)
    except NotFound:
        raise EvalInputError(f"{where}: image {uri} not found") from None
    try:
        return decode_image(data)
    except (UnidentifiedImageError, OSError) as err:
        raise EvalInputError(f"{where}: image {uri} cannot be decoded ({err})") from err


def check_images_exist(storage: Storage, items_by_task: dict[str, list[Item]]) -> None:
    """Fail before any inference when an image is missing: one listing per folder (shared by the tasks that
    use it), not one call per image."""
    folders: dict[str, set[str]] = {}
    for task, items in items_by_task.items():
        missing = []
        for item in items:
            folder = item.image.rsplit("/", 1)[0]
            if folder not in folders:
                folders[folder] = set(storage.list(folder))
            if item.image not in folders[folder] and not storage.exists(item.image):
                missing.append(f"{item.id}: {item.image}")
        if missing:
            raise EvalInputError(f"{task}: {len(missing)} image(s) not found, e.g. {missing[:5]}")


def image_uri(images_root: str, relative: str) -> str:
    return join(images_root, relative)
