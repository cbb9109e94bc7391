"""ingest under ordinary but hostile folders: ids, re-ingest after changes, bad files."""

import io
import json
import os
import unicodedata

import numpy as np
import pytest
from PIL import Image
from skimage import data

from clipdpo.artifacts import Artifact
from clipdpo.demo import photos
from clipdpo.images import decode_image
from clipdpo.ingest.__main__ import main as ingest_main
from clipdpo.ingest.sources import list_sources, read_source
from clipdpo.storage import Storage, StorageError


def _png(path, color=(200, 10, 10), size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def _rows(uri):
    artifact = Artifact.open(Storage(), uri, kind="images")
    return [row for _, table in artifact.iter_shards(["image_id", "uri"]) for row in table.to_pylist()]


def test_ids_are_unique_per_file_and_keep_extension(tmp_path):
    src = tmp_path / "src"
    for name in ("a.jpg", "a.png", "sub/b.png", "sub__b.png", "c.png"):
        _png(src / name)
    out = str(tmp_path / "out")
    assert ingest_main(["--source", str(src), "--output", out]) == 0
    rows = _rows(out)
    ids = sorted(row["image_id"] for row in rows)
    assert ids == ["a.jpg", "a.png", "c.png", "sub%2Fb.png", "sub__b.png"]
    # Stable across machines: the id depends on the path below the source, not on where it lies.
    other = tmp_path / "elsewhere" / "copy"
    for name in ("a.jpg", "a.png", "sub/b.png", "sub__b.png", "c.png"):
        _png(other / name)
    out2 = str(tmp_path / "out2")
    assert ingest_main(["--source", str(other), "--output", out2]) == 0
    assert sorted(row["image_id"] for row in _rows(out2)) == ids


def test_ids_that_cannot_be_unique_are_refused_with_the_clashes(tmp_path, capsys):
    src = tmp_path / "src"
    composed = unicodedata.normalize("NFC", "caf\u00e9.png")
    decomposed = unicodedata.normalize("NFD", composed)
    _png(src / composed)
    _png(src / decomposed)
    assert len(list(src.iterdir())) == 2  # Linux keeps both spellings as two files
    code = ingest_main(["--source", str(src), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "image id(s) shared by several source files" in err and composed in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_reingest_after_adding_removing_or_replacing_images_reruns(tmp_path):
    src = tmp_path / "src"
    for name in ("a.png", "b.png"):
        _png(src / name)
    out = str(tmp_path / "out")
    argv = ["--source", str(src), "--output", out, "--overwrite"]
    assert ingest_main(argv) == 0
    assert sorted(r["image_id"] for r in _rows(out)) == ["a.png", "b.png"]
    _png(src / "d.png")
    assert ingest_main(argv) == 0
    assert sorted(r["image_id"] for r in _rows(out)) == ["a.png", "b.png", "d.png"]
    (src / "a.png").unlink()
    assert ingest_main(argv) == 0
    assert sorted(r["image_id"] for r in _rows(out)) == ["b.png", "d.png"]
    _png(src / "b.png", color=(0, 0, 255), size=(9, 5))  # replaced in place
    assert ingest_main(argv) == 0
    artifact = Artifact.open(Storage(), out)
    sizes = {r["image_id"]: (r["width"], r["height"]) for _, t in artifact.iter_shards() for r in t.to_pylist()}
    assert sizes == {"b.png": (9, 5), "d.png": (8, 6)}
    # Without --overwrite, a changed folder is refused rather than silently kept.
    _png(src / "e.png")
    assert ingest_main(argv[:-1]) == 2


def test_output_equal_to_or_inside_the_source_is_refused_before_anything_is_deleted(tmp_path, capsys):
    src = tmp_path / "src"
    _png(src / "a.png")
    out = str(tmp_path / "out")
    assert ingest_main(["--source", str(src), "--output", out]) == 0
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    for source, output in ((out, out), (out, out + "/inner"), (str(src), str(tmp_path))):
        capsys.readouterr()
        assert ingest_main(["--source", source, "--output", output, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "overlaps the input" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before
    assert (src / "a.png").exists()


def test_unreadable_and_non_image_files_are_counted_skipped_and_listed(tmp_path):
    src = tmp_path / "src"
    _png(src / "good.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (src / "notes.txt").write_text("not an image")
    out = str(tmp_path / "out")
    assert ingest_main(["--source", str(src), "--output", out]) == 0
    stats = json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]
    assert stats["images"] == 1
    assert stats["images_failed"] == 1 and stats["failed_uris"] == [str(src / "broken.jpg")]
    assert stats["not_images"] == 1 and stats["not_image_uris"] == [str(src / "notes.txt")]


def test_builtin_demo_lists_the_demo_photos_and_reads_them_losslessly():
    listing = list_sources(Storage(), "builtin:demo", "ignored")
    assert [(r.image_id, r.source) for r in listing.images] == [(f"demo-{n}", "skimage") for n in photos.NAMES]
    assert listing.not_images == [] and listing.fingerprint == list_sources(Storage(), "builtin:demo", "x").fingerprint
    coins = next(r for r in listing.images if r.image_id == "demo-coins")
    decoded = np.asarray(Image.open(io.BytesIO(read_source(Storage(), coins))))
    np.testing.assert_array_equal(decoded, data.coins())  # PNG: the very pixels scikit-image ships
    with pytest.raises(ValueError, match="not a demo photo"):
        photos.read(photos.URI_PREFIX + "nothing")


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied"),
        OSError(5, "Input/output error"),
        StorageError("s3://b/src/b.png: S3 error InternalError: try again"),
    ],
)
def test_a_file_that_cannot_be_read_fails_its_shard_and_a_rerun_takes_it_in(tmp_path, monkeypatch, capsys, error):
    """A read error is the storage's, not the data's: skipping the file would be for good (the listing, and so the
    fingerprint, do not change when the file becomes readable), so its shard fails and the rerun retries it."""
    src = tmp_path / "src"
    for name in ("a.png", "b.png", "c.png"):
        _png(src / name)
    out = tmp_path / "out"
    argv = ["--source", str(src), "--output", str(out), "--set", "shard_size=1"]
    read_bytes = Storage.read_bytes

    def failing_for_b(self, uri):
        if uri.endswith("b.png"):
            raise error
        return read_bytes(self, uri)

    monkeypatch.setattr(Storage, "read_bytes", failing_for_b)
    assert ingest_main(argv) == 2
    err = capsys.readouterr().err
    assert f"{src / 'b.png'}: cannot be read (" in err and "rerun" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (out / "manifest.json").exists()

    monkeypatch.setattr(Storage, "read_bytes", read_bytes)  # the file is readable again
    assert ingest_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped_shards"] == 1 and summary["processed_shards"] == 2  # a.png's shard kept, b's redone
    assert sorted(r["image_id"] for r in _rows(str(out))) == ["a.png", "b.png", "c.png"]
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["images"] == 3 and stats["images_failed"] == 0


def test_folders_that_cannot_be_opened_fifos_and_broken_links_are_counted_and_named(tmp_path, monkeypatch):
    """Tests run as root, which opens any folder: the unreadable folder is one whose listing fails."""
    src = tmp_path / "src"
    _png(src / "good.png")
    _png(src / "locked" / "hidden.png")
    os.mkfifo(src / "pipe.png")
    (src / "gone.png").symlink_to(src / "nowhere.png")
    _png(tmp_path / "elsewhere" / "linked.png")
    (src / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    scandir = os.scandir

    def locked_out(path="."):
        if os.fspath(path) == str(src / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked_out)
    out = tmp_path / "out"
    assert ingest_main(["--source", str(src), "--output", str(out)]) == 0
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["images"] == 1 and stats["images_failed"] == 0
    assert stats["not_files"] == 4
    assert stats["not_file_uris"] == [
        f"{src / 'gone.png'} (broken link)",
        f"{src / 'linked'} (linked folder, not followed)",
        f"{src / 'locked'} (folder cannot be opened: Permission denied)",
        f"{src / 'pipe.png'} (FIFO)",
    ]


def test_a_sideways_photo_is_measured_upright_and_stored_as_taken(tmp_path):
    """The EXIF orientation is applied at decode, once: ingest records the size a viewer shows and keeps the file's
    bytes (tag included), so every later decode turns it exactly once."""
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 0, 255)).save(buffer, format="JPEG", exif=exif.tobytes())
    (src / "portrait.jpg").write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    assert ingest_main(["--source", str(src), "--output", str(out)]) == 0
    artifact = Artifact.open(Storage(), str(out), kind="images")
    (row,) = [r for _, t in artifact.iter_shards() for r in t.to_pylist()]
    assert (row["width"], row["height"]) == (20, 40)
    assert row["image"] == buffer.getvalue()
    assert decode_image(row["image"]).size == (20, 40)
