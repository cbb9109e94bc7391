"""generate and score see images upright, and hold a batch of decoded images at a time, not a shard's."""

import io
import weakref
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from clipdpo import images as images_lib
from clipdpo.demo import models as tiny
from clipdpo.engines import ModelSpec
from clipdpo.generate import shard as generate_shard_lib
from clipdpo.generate.config import GenerateConfig, QAConfig
from clipdpo.schemas import CANDIDATES, IMAGES
from clipdpo.score.scorer import ClipScorer, ScorerConfig
from clipdpo.score.shard import score_shard

SHARD = 20  # images in the shard


def _encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _sideways() -> bytes:
    """Stored 40x20 with EXIF orientation 6: a viewer shows it 20 wide, 40 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(Image.new("RGB", (40, 20), (250, 0, 0)), "JPEG", exif=exif.tobytes())


def _images_shard() -> pa.Table:
    rows = [
        dict(
            image_id=f"img{k:02d}",
            source="s",
            uri=f"u{k}",
            width=8,
            height=6,
            image=_encoded(Image.new("RGB", (8, 6), (k * 10, 0, 0))),
        )
        for k in range(SHARD - 2)
    ]
    rows.append(dict(image_id="sideways", source="s", uri="u-s", width=20, height=40, image=_sideways()))
    rows.append(dict(image_id="broken", source="s", uri="u-b", width=1, height=1, image=b"\xff\xd8 not a jpeg"))
    return pa.Table.from_pylist(rows, schema=IMAGES)


@pytest.fixture
def live_images(monkeypatch):
    """The most decoded images alive at once: counted at every decode, the new one included."""
    decoded: list[weakref.ref] = []  # PIL images cannot go in a WeakSet (unhashable)
    peak = {"alive": 0}
    decode = images_lib.decode_image

    def counting(data: bytes) -> Image.Image:
        image = decode(data)  # no gc.collect(): an image kept alive by a cycle counts, an upper bound
        decoded.append(weakref.ref(image))
        peak["alive"] = max(peak["alive"], sum(ref() is not None for ref in decoded))
        return image

    monkeypatch.setattr(images_lib, "decode_image", counting)
    return peak


class RecordingCaptioner:
    """A caption engine that answers from the seed and notes the size of every image it is shown."""

    def __init__(self):
        self.sizes: set[tuple[int, int]] = set()
        self.calls = 0

    def caption(self, requests, sampling):
        self.calls += 1
        self.sizes.update(request.image.size for request in requests)
        return [[f"caption {request.seed % 97} {i}" for i in range(request.n)] for request in requests]


def _generate(per_call: int, monkeypatch) -> tuple[pa.Table, dict, dict]:
    monkeypatch.setattr(generate_shard_lib, "IMAGES_PER_CALL", per_call, raising=False)  # (absent: all at once)
    cfg = GenerateConfig(
        captioners=[ModelSpec("a", "unused"), ModelSpec("b", "unused")],
        prompts=["p0", "p1", "p2"],
        captions_per_model=2,
        batch_size=2,
        qa=QAConfig(enabled=False),
    )
    engines = {"a": RecordingCaptioner(), "b": RecordingCaptioner()}
    table, stats = generate_shard_lib.generate_shard(_images_shard(), cfg, engines, None)
    return table, stats, engines


def test_generate_holds_one_call_of_images_and_writes_what_one_whole_shard_call_would(live_images, monkeypatch):
    table, stats, engines = _generate(4, monkeypatch)
    assert live_images["alive"] <= 4, live_images  # IMAGES_PER_CALL (4, a multiple of batch_size 2), not 20
    assert engines["a"].calls == 5  # 19 decodable images, 4 at a time
    assert stats["images"] == SHARD - 1 and stats["images_failed"] == 1 and stats["failed_image_ids"] == ["broken"]
    assert (20, 40) in engines["a"].sizes and (40, 20) not in engines["a"].sizes  # shown upright
    whole, whole_stats, _ = _generate(1000, monkeypatch)
    assert table.equals(whole) and stats == whole_stats  # same rows, same order
    assert table.num_rows == (SHARD - 1) * 2 * 2  # images x models x captions


def test_generate_rounds_images_per_call_up_to_the_hf_batch():
    assert [generate_shard_lib.images_per_call(b) for b in (1, 8, 10, 64, 100)] == [64, 64, 70, 64, 100]


@pytest.fixture(scope="module")
def scorer_config(tmp_path_factory) -> ScorerConfig:
    clip_dir = tiny.build_tiny_clip(str(tmp_path_factory.mktemp("clip")))
    return ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=clip_dir, image_batch_size=3)


@pytest.mark.slow(seconds=30)  # the tiny CLIP's scorer takes most of it to build
def test_score_holds_one_batch_of_images_and_scores_them_upright(scorer_config, live_images):
    scorer = ClipScorer(scorer_config)
    shown: list[tuple[int, int]] = []
    preprocess = scorer.preprocess
    scorer.preprocess = lambda image: (shown.append(image.size), preprocess(image))[1]
    images = _images_shard()
    ids = images.column("image_id").to_pylist() + ["not-in-shard"]
    candidates = pa.Table.from_pylist(
        [
            dict(
                image_id=image_id,
                candidate_id=f"{image_id}/m/p0/0",
                kind="caption",
                model="m",
                prompt_id=0,
                prompt="p",
                text=f"a photo number {k}",
            )
            for k, image_id in enumerate(ids)
        ],
        schema=CANDIDATES,
    )
    table, stats = score_shard(candidates, images, scorer)
    assert live_images["alive"] <= 3, live_images  # image_batch_size, not the shard's 19
    assert (20, 40) in shown and (40, 20) not in shown
    assert stats["images_failed"] == 2 and stats["failed_image_ids"] == ["broken", "not-in-shard"]
    assert stats["image_encodes"] == SHARD - 1 and table.num_rows == SHARD - 1
    # each row's score is its own image's: independent of the batching
    by_id = {row["image_id"]: row["clip_score"] for row in table.to_pylist()}
    scorer.config = replace(scorer_config, image_batch_size=64)
    whole_table, _ = score_shard(candidates, images, scorer)
    np.testing.assert_allclose(
        [by_id[r["image_id"]] for r in whole_table.to_pylist()],
        whole_table.column("clip_score").to_pylist(),
        rtol=1e-5,
        atol=1e-4,
    )
