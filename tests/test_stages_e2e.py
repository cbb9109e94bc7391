"""ingest -> generate -> score -> filter with tiny models, every artifact through loopback S3."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipdpo import tiny
from clipdpo.artifacts import Artifact, ArtifactError, ArtifactWriter
from clipdpo.filter.__main__ import run as run_filter
from clipdpo.generate.__main__ import run as run_generate
from clipdpo.ingest.__main__ import run as run_ingest
from clipdpo.schemas import IMAGES
from clipdpo.score.__main__ import run as run_score
from clipdpo.score.scorer import ClipScorer, ScorerConfig
from clipdpo.storage import Storage


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.build_all(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def configs(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    generate = {
        "captioners": [{"name": "tiny-a", "path": models["captioner"], "engine": "hf"},
                       {"name": "tiny-b", "path": models["captioner"], "engine": "hf"}],
        "captions_per_model": 3,
        "sampling": {"max_new_tokens": 12},
        "qa": {"model": {"name": "tiny-llm", "path": models["llm"], "engine": "hf"}, "sampling": {"max_new_tokens": 16}},
    }
    score = {"model_name": tiny.TINY_CLIP_NAME, "pretrained": None, "model_config_dir": models["clip_config_dir"]}
    paths = {}
    for name, body in {"generate": generate, "score": score}.items():
        paths[name] = str(folder / f"{name}.json")
        (folder / f"{name}.json").write_text(json.dumps(body))
    return paths


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_full_chain_through_s3(bucket, configs, tmp_path, capsys):
    storage = Storage()
    # Images as files in an S3 prefix, one of them corrupt.
    for name, color in [("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))]:
        storage.write_bytes(f"{bucket}/raw/{name}.png", _png(color))
    storage.write_bytes(f"{bucket}/raw/broken.jpg", b"\xff\xd8 not really a jpeg")
    base = f"{bucket}/run"
    ingest_stats = run_ingest(["--source", f"{bucket}/raw", "--output", f"{base}/images", "--set", "shard_size=2"])
    assert ingest_stats["images"] == 3 and ingest_stats["images_failed"] == 1
    assert ingest_stats["failed_uris"] == [f"{bucket}/raw/broken.jpg"]

    gen = run_generate(["--input", f"{base}/images", "--output", f"{base}/candidates", "--config", configs["generate"]])
    assert gen["images"] == 3
    assert gen["captions"] + gen["captions_empty"] == 3 * 2 * 3  # images x models x captions_per_model
    candidates = Artifact.open(storage, f"{base}/candidates", kind="candidates")
    rows = [r for _, t in candidates.iter_shards() for r in t.to_pylist()]
    assert {r["model"] for r in rows if r["kind"] == "caption"} == {"tiny-a", "tiny-b"}
    assert sorted({r["prompt_id"] for r in rows if r["kind"] == "caption"}) == [0, 1, 2]  # 3 captions over 5 prompts
    assert len({r["candidate_id"] for r in rows}) == len(rows)

    score = run_score(["--input", f"{base}/candidates", "--output", f"{base}/scores", "--config", configs["score"]])
    assert score["image_encodes"] == score["images"] == 3  # one encode per image, not per caption
    assert score["text_encodes"] <= score["texts_scored"]

    pairs_stats = run_filter(["--input", f"{base}/scores", "--output", f"{base}/pairs",
                              "--set", "caption_min_score=-100", "--set", "pair_min_margin=0.0",
                              "--set", "pair_min_length_ratio=0.0", "--set", "text_keep_fraction=1.0"])
    err = capsys.readouterr().err
    assert "filter funnel" in err and "caption_pairs" in err
    pairs = Artifact.open(storage, f"{base}/pairs", kind="pairs")
    table = pa.concat_tables([t for _, t in pairs.iter_shards()])
    assert table.num_rows == pairs_stats["caption_pairs"] + pairs_stats["qa_pairs"] > 0
    assert all(c >= r for c, r in zip(table.column("chosen_score").to_pylist(), table.column("rejected_score").to_pylist()))
    exported = pa.concat_tables(pq.read_table(io.BytesIO(storage.read_bytes(uri)))  # TRL dataset, images embedded
                                for uri in storage.list(f"{base}/pairs/export/trl"))
    assert exported.num_rows == table.num_rows and set(exported.column_names) >= {"prompt", "chosen", "rejected", "images"}

    # Rerunning a finished stage is a no-op; a lost shard is redone alone.
    again = run_score(["--input", f"{base}/candidates", "--output", f"{base}/scores", "--config", configs["score"]])
    assert again == score
    lost_shard = Artifact.open(storage, f"{base}/scores").shard_uri("part-00001")
    storage.delete(f"{base}/scores/manifest.json")
    storage.delete(lost_shard)
    capsys.readouterr()
    run_score(["--input", f"{base}/candidates", "--output", f"{base}/scores", "--config", configs["score"]])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["processed_shards"] == 1 and summary["skipped_shards"] == 1


def test_scores_equal_independent_cosine(configs, models):
    cfg = ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=models["clip_config_dir"])
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


def test_missing_input_and_malformed_shard_are_clear(bucket, configs):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        run_score(["--input", f"{bucket}/nothing", "--output", f"{bucket}/s", "--config", configs["score"]])
    storage = Storage()
    writer = ArtifactWriter(storage, f"{bucket}/images", "images", {}, [])
    writer.write_shard("part-00000", pa.Table.from_pylist(
        [dict(image_id="a", source="s", uri="u", image=_png((1, 2, 3)), width=40, height=30)], schema=IMAGES))
    writer.finalize(["part-00000"])
    storage.write_bytes(writer.shard_uri("part-00000"), b"PAR1garbage")
    with pytest.raises(ArtifactError, match="part-00000.parquet: sha256"):
        run_generate(["--input", f"{bucket}/images", "--output", f"{bucket}/c", "--config", configs["generate"]])


def test_unknown_config_key_is_named(bucket, configs):
    from clipdpo.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['caption_min_scor'\]"):
        run_filter(["--input", f"{bucket}/x", "--output", f"{bucket}/y", "--set", "caption_min_scor=3"])
    with pytest.raises(ConfigError, match="caption_min_score: expected a number"):
        run_filter(["--input", f"{bucket}/x", "--output", f"{bucket}/y", "--set", "caption_min_score=high"])


def test_untrained_scorer_is_reproducible(models):
    cfg = ScorerConfig(model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=models["clip_config_dir"])
    first, second = ClipScorer(cfg), ClipScorer(cfg)
    np.testing.assert_array_equal(first.encode_texts(["a dog"]), second.encode_texts(["a dog"]))
