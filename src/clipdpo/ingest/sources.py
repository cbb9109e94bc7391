"""Where images come from: a folder or S3 prefix of image files, or the built-in demo set (its photos
live in `clipdpo.demo.photos`; this module only lists and reads them like any other source)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

from clipdpo.demo import photos
from clipdpo.errors import UserError
from clipdpo.storage import ObjectInfo, Storage, StorageError, is_remote

log = logging.getLogger("clipdpo.ingest")

BUILTIN_DEMO = photos.SOURCE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceRef:
    """An image to ingest; its bytes are read only when its shard is written."""

    image_id: str
    source: str
    uri: str


class ImageIdClash(UserError):
    """Two source files would get one image id; the message lists them."""


def image_id_for(root: str, uri: str) -> str:
    """Stable id from the path below the root: same file, same id, whatever the machine.

    The id is the relative path, extension kept (`a.jpg` and `a.png` are two images), in Unicode
    NFC (macOS and Linux spell accented names differently), with `%` and `/` percent-escaped so
    that the mapping is one-to-one (`sub/b.png` -> `sub%2Fb.png`, `sub__b.png` stays itself) and
    ids never contain the `/` that candidate ids use as a separator.
    """
    relative = unicodedata.normalize("NFC", uri[len(root.rstrip("/")) + 1 :])
    return relative.replace("%", "%25").replace("/", "%2F")


def check_unique_ids(refs: list[SourceRef]) -> None:
    """Refuse a listing in which two files share an id (only Unicode-equivalent names can)."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for ref in refs:
        by_id[ref.image_id].append(ref.uri)
    clashes = {image_id: uris for image_id, uris in by_id.items() if len(uris) > 1}
    if clashes:
        listed = "; ".join(f"{image_id!r}: {uris}" for image_id, uris in sorted(clashes.items())[:20])
        raise ImageIdClash(f"{len(clashes)} image id(s) shared by several source files, rename them: {listed}")


class SourceError(UserError):
    """The source folder or prefix is missing or holds no images."""


class SourceReadError(StorageError):
    """A listed source file could not be read (permission, I/O, S3): its shard fails, so a rerun retries it."""


@dataclass(frozen=True)
class Listing:
    """What a source holds: the images to ingest, the other files (skipped, reported), a fingerprint, and the
    entries that are not files it could read (skipped, reported as `PATH (why)`): folders that cannot be
    opened, broken links, FIFOs, sockets, devices, and linked folders (not followed)."""

    images: list[SourceRef]
    not_images: list[str]
    fingerprint: str
    not_files: list[str] = field(default_factory=list)


def listing_fingerprint(root: str, files: list[ObjectInfo]) -> str:
    """Changes when a file is added, removed or replaced (size, S3 ETag or local mtime)."""
    digest = hashlib.sha256()
    for info in files:
        digest.update(f"{info.uri[len(root.rstrip('/')) + 1 :]}\t{info.size}\t{info.version}\n".encode())
    return digest.hexdigest()


def _why_not_a_file(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not a regular file"


def list_local(root: str) -> tuple[list[ObjectInfo], list[str]]:
    """The regular files below the folder `root` (links to files followed), sorted, with size and mtime; and
    every entry that is not one, as `PATH (why)`, rather than leaving it out unseen."""
    files: list[ObjectInfo] = []
    not_files: list[str] = []

    def unlisted(err: OSError) -> None:
        not_files.append(f"{err.filename} (folder cannot be opened: {err.strerror or err})")

    for folder, subfolders, names in os.walk(root, onerror=unlisted, followlinks=False):
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError as err:
                not_files.append(f"{path} ({'broken link' if os.path.islink(path) else err.strerror or err})")
                continue
            if stat.S_ISREG(info.st_mode):
                if ".tmp-" not in name:  # a writer's temporary file, not yet an object
                    files.append(ObjectInfo(path, info.st_size, str(info.st_mtime_ns)))
            else:
                not_files.append(f"{path} ({_why_not_a_file(info.st_mode)})")
        # os.walk lists links to folders among the folders and does not enter them: name them too
        not_files.extend(
            f"{os.path.join(folder, name)} (linked folder, not followed)"
            for name in subfolders
            if os.path.islink(os.path.join(folder, name))
        )
    return sorted(files, key=lambda info: info.uri), sorted(not_files)


def list_sources(storage: Storage, root: str, source_name: str) -> Listing:
    if root == BUILTIN_DEMO:
        refs = [SourceRef(image_id, photos.SOURCE_NAME, uri) for image_id, uri in photos.listing()]
        return Listing(refs, [], photos.fingerprint())
    if not root:
        raise SourceError(f"no --source given: pass a folder, an s3:// prefix, or {BUILTIN_DEMO} for the demo set")
    if not is_remote(root) and not os.path.isdir(root):
        raise SourceError(f"{root}: no such folder (--source takes a folder, an s3:// prefix or {BUILTIN_DEMO})")
    files, not_files = (storage.list_info(root), []) if is_remote(root) else list_local(root)
    if not_files:
        log.warning(
            "%s: %d entr%s skipped (not files that can be read), e.g. %s",
            root,
            len(not_files),
            "y" if len(not_files) == 1 else "ies",
            not_files[:3],
        )
    images = [info.uri for info in files if info.uri.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        unread = f" ({len(not_files)} entries could not be read, e.g. {not_files[:3]})" if not_files else ""
        raise SourceError(
            f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found among {len(files)} object(s)" + unread
        )
    refs = [SourceRef(image_id_for(root, uri), source_name, uri) for uri in images]
    check_unique_ids(refs)
    not_images = [info.uri for info in files if not info.uri.lower().endswith(IMAGE_SUFFIXES)]
    return Listing(refs, not_images, listing_fingerprint(root, files), not_files)


def read_source(storage: Storage, ref: SourceRef) -> bytes:
    if photos.is_photo(ref.uri):
        return photos.read(ref.uri)
    return storage.read_bytes(ref.uri)
