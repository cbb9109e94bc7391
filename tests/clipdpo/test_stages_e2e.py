"""ingest -> generate -> score -> filter with tiny models, every artifact through loopback S3."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipdpo import generate, ingest, score
from clipdpo.artifacts import Artifact, ArtifactError, ArtifactWriter
from clipdpo.config import from_dict
from clipdpo.demo import models as tiny
from clipdpo.filter.__main__ import main as filter_main
from clipdpo.generate.config import GenerateConfig
from clipdpo.ingest import IngestConfig
from clipdpo.ingest.__main__ import main as ingest_main
from clipdpo.schemas import IMAGES
from clipdpo.score.scorer import ClipScorer, ScorerConfig
from clipdpo.storage import Storage


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.build_all(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    """The tiny CLIP alone (a config file): enough for the scorer tests."""
    return tiny.build_tiny_clip(str(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def configs(models):
    """The typed configs of generate and score for the tiny models."""
    generate_config = {
        "captioners": [
            {"name": "tiny-a", "path": models["captioner"], "engine": "hf"},
            {"name": "tiny-b", "path": models["captioner"], "engine": "hf"},
        ],
        "captions_per_model": 3,
        "sampling": {"max_new_tokens": 12},
        "qa": {
            "model": {"name": "tiny-llm", "path": models["llm"], "engine": "hf"},
            "sampling": {"max_new_tokens": 16},
        },
    }
    score_config = {
        "model_name": tiny.TINY_CLIP_NAME,
        "pretrained": None,
        "model_config_dir": models["clip_config_dir"],
    }
    return {"generate": from_dict(GenerateConfig, generate_config), "score": from_dict(ScorerConfig, score_config)}


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_full_chain_through_s3(bucket, configs, tmp_path, capsys):
    storage = Storage()
    # Images as files in an S3 prefix, one of them corrupt.
    for name, color in [("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))]:
        storage.write_bytes(f"{bucket}/raw/{name}.png", _png(color))
    storage.write_bytes(f"{bucket}/raw/broken.jpg", b"\xff\xd8 not really a jpeg")
    base = f"{bucket}/run"
    ingest_stats = ingest.run(IngestConfig(shard_size=2), f"{bucket}/raw", f"{base}/images")
    assert ingest_stats["images"] == 3 and ingest_stats["images_failed"] == 1
    assert ingest_stats["failed_uris"] == [f"{bucket}/raw/broken.jpg"]

    gen = generate.run(configs["generate"], f"{base}/images", f"{base}/candidates")
    assert gen["images"] == 3
    assert gen["captions"] + gen["captions_empty"] == 3 * 2 * 3  # images x models x captions_per_model
    candidates = Artifact.open(storage, f"{base}/candidates", kind="candidates")
    rows = [r for _, t in candidates.iter_shards() for r in t.to_pylist()]
    assert {r["model"] for r in rows if r["kind"] == "caption"} == {"tiny-a", "tiny-b"}
    assert sorted({r["prompt_id"] for r in rows if r["kind"] == "caption"}) == [0, 1, 2]  # 3 captions over 5 prompts
    assert len({r["candidate_id"] for r in rows}) == len(rows)

    scored = score.run(configs["score"], f"{base}/candidates", f"{base}/scores")
    assert scored["image_encodes"] == scored["images"] == 3  # one encode per image, not per caption
    assert scored["text_encodes"] <= scored["texts_scored"]

    # filter through its command line: flags -> config -> run
    assert (
        filter_main(
            [
                "--input",
                f"{base}/scores",
                "--output",
                f"{base}/pairs",
                "--set",
                "caption_min_score=-100",
                "--set",
                "pair_min_margin=0.0",
                "--set",
                "pair_min_length_ratio=0.0",
                "--set",
                "text_keep_fraction=1.0",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "filter funnel" in err and "caption_pairs" in err
    pairs = Artifact.open(storage, f"{base}/pairs", kind="pairs")
    pairs_stats = pairs.manifest.stats
    table = pa.concat_tables([t for _, t in pairs.iter_shards()])
    assert table.num_rows == pairs_stats["caption_pairs"] + pairs_stats["qa_pairs"] > 0
    assert all(
        c >= r for c, r in zip(table.column("chosen_score").to_pylist(), table.column("rejected_score").to_pylist())
    )
    exported = pa.concat_tables(
        pq.read_table(io.BytesIO(storage.read_bytes(uri)))  # TRL dataset, images embedded
        for uri in storage.list(f"{base}/pairs/export/trl")
    )
    assert exported.num_rows == table.num_rows and set(exported.column_names) >= {
        "prompt",
        "chosen",
        "rejected",
        "images",
    }

    # Rerunning a finished stage is a no-op; a lost shard is redone alone.
    again = score.run(configs["score"], f"{base}/candidates", f"{base}/scores")
    assert again == scored
    lost_shard = Artifact.open(storage, f"{base}/scores").shard_uri("part-00001")
    storage.delete(f"{base}/scores/manifest.json")
    storage.delete(lost_shard)
    capsys.readouterr()
    score.run(configs["score"], f"{base}/candidates", f"{base}/scores")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["processed_shards"] == 1 and summary["skipped_shards"] == 1


def test_scores_equal_independent_cosine(clip_dir):
    cfg = ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=clip_dir)
    scorer = ClipScorer(cfg)
    import torch

    image = Image.new("RGB", (40, 30), (10, 200, 30))
    texts = ["a green field", "a red car"]
    with torch.no_grad():
        img = scorer.model.encode_image(scorer.preprocess(image)[None]).numpy()[0]
        txt = scorer.model.encode_text(scorer.tokenizer(texts)).numpy()
    expected = [100 * float(img @ t / np.linalg.norm(img) / np.linalg.norm(t)) for t in txt]
    got = 100 * scorer.encode_images([image])[0] @ scorer.encode_texts(texts).T
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    categories, cat_scores = scorer.categorize(scorer.encode_images([image]))
    assert categories[0] in {"text", "people", "objects", "scenes"}
    assert scorer.token_counts(["a dog"]) == [4]  # <start> a dog <end>


def test_missing_input_and_malformed_shard_are_clear(bucket, clip_dir):
    # the input is checked before any model loads: the default (real) captioners are never fetched
    score_config = ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=clip_dir)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        score.run(score_config, f"{bucket}/nothing", f"{bucket}/s")
    storage = Storage()
    writer = ArtifactWriter(storage, f"{bucket}/images", "images", {}, [])
    writer.write_shard(
        "part-00000",
        pa.Table.from_pylist(
            [dict(image_id="a", source="s", uri="u", image=_png((1, 2, 3)), width=40, height=30)], schema=IMAGES
        ),
    )
    writer.finalize(["part-00000"])
    storage.write_bytes(writer.shard_uri("part-00000"), b"PAR1garbage")
    with pytest.raises(ArtifactError, match="part-00000.parquet: sha256"):
        generate.run(GenerateConfig(), f"{bucket}/images", f"{bucket}/c")


def test_unknown_config_key_is_named(bucket, capsys):
    # a user error: one line on stderr naming the key, exit code 2 (the traceback only with --debug)
    assert filter_main(["--input", f"{bucket}/x", "--output", f"{bucket}/y", "--set", "caption_min_scor=3"]) == 2
    assert "unknown key(s) ['caption_min_scor']" in capsys.readouterr().err
    assert filter_main(["--input", f"{bucket}/x", "--output", f"{bucket}/y", "--set", "caption_min_score=high"]) == 2
    assert "caption_min_score: expected a number" in capsys.readouterr().err


def test_untrained_scorer_is_reproducible(clip_dir):
    cfg = ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=clip_dir)
    first, second = ClipScorer(cfg), ClipScorer(cfg)
    np.testing.assert_array_equal(first.encode_texts(["a dog"]), second.encode_texts(["a dog"]))


def test_config_file_on_s3_then_overrides(bucket, capsys):
    Storage().write_bytes(f"{bucket}/configs/filter.json", json.dumps({"pair_min_margin": 1.5}).encode())
    assert (
        filter_main(
            [
                "--input",
                f"{bucket}/x",
                "--output",
                f"{bucket}/y",
                "--config",
                f"{bucket}/configs/filter.json",
                "--set",
                "pairs_per_image=2",
                "--dry-run",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["pair_min_margin"] == 1.5 and printed["pairs_per_image"] == 2  # file, then --set
    assert printed["caption_min_score"] == 28.0  # the paper's default where neither says otherwise
    # a stage's own flag is shorthand for --set: ingest's --source lands in its config, kept a string
    assert ingest_main(["--output", f"{bucket}/i", "--source", "123", "--set", "shard_size=7", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == {"source": "123", "source_name": "local", "shard_size": 7}
