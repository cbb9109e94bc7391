"""A finished run's artifacts, written through the real artifact code, with every number chosen so a test
can work out the report's figures by hand: scores, pairs (with the filter's config and funnel), training
metrics and summary, and the evaluation's metrics.json with AMBER examples and their images."""

from __future__ import annotations

import io
import json

import pyarrow as pa
from PIL import Image

from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.schemas import SCORES
from clipdpo.stage import sum_stats
from clipdpo.storage import Storage, join

# image -> (category, caption CLIP scores); img2 has one caption only: no margin of its own
CAPTIONS = {
    "img0": ("people", [30.0, 26.0, 28.0]),
    "img1": ("objects", [31.0, 29.5]),
    "img2": ("scenes", [25.0]),
    "img3": ("people", [33.0, 27.0]),
}
# caption pairs: (image, chosen, rejected, chosen score, rejected score); one qa pair besides
PAIRS = [
    ("img0", "a man and a woman at a table", "a man", 30.0, 26.0),
    ("img1", "a cup", "a red cup on a wooden desk", 31.0, 29.5),
    ("img3", "two people walking a dog in a park", "people outside", 33.0, 27.0),
]
FUNNEL = {
    "rows_in": 12,
    "captions_in": 8,
    "qa_in": 4,
    "removed_caption_low_score": 1,
    "captions_kept": 7,
    "qa_kept": 1,
    "caption_pairs": 3,
    "qa_pairs": 1,
}
TRAIN_ROWS = [
    {
        "step": s,
        "loss": 0.69 - 0.05 * s,
        "rewards/accuracy": 0.25 * s,
        "rewards/margin": 0.02 * s,
        "rewards/chosen": 0.01 * s,
        "rewards/rejected": -0.01 * s,
        "samples_per_s": 4.0 + s,
    }
    for s in (1, 2, 3, 4)
]
EXAMPLES = {
    "base": [
        {"id": 1, "response": "A dog and a cat on the grass.", "hallucinated": ["cat"]},
        {"id": 2, "response": "A car near a tree and a man.", "hallucinated": ["man"]},
    ],
    "clip-dpo": [
        {"id": 1, "response": "A dog on the grass.", "hallucinated": []},
        {"id": 2, "response": "A car near a tree and a man.", "hallucinated": ["man"]},
    ],
}


def jpeg(colour, size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def _scores_table() -> pa.Table:
    rows = [(image, category, score) for image, (category, scores) in CAPTIONS.items() for score in scores]
    columns = {name: pa.nulls(len(rows) + 1, field.type) for name, field in zip(SCORES.names, SCORES)}
    columns["image_id"] = pa.array([r[0] for r in rows] + ["img0"])
    columns["kind"] = pa.array(["caption"] * len(rows) + ["qa"])
    columns["category"] = pa.array([r[1] for r in rows] + ["people"])
    columns["clip_score"] = pa.array([r[2] for r in rows] + [None], pa.float32())
    return pa.table(columns, schema=SCORES)


def _amber(chair, hal, f1, existence_f1):
    return {
        "complete": True,
        "generative": {"chair": chair, "cover": 50.0, "hal": hal, "cog": 2.0},
        "discriminative": {"accuracy": 70.0, "precision": 80.0, "recall": 60.0, "f1": f1},
        "existence": {"f1": existence_f1},
        "attribute": {"f1": 60.0},
        "amber_score": (100 - chair + f1) / 2,
    }


def write_run(root: str, storage: Storage | None = None) -> str:
    storage = storage or Storage()
    scores = ArtifactWriter(storage, join(root, "scores"), "scores", {"test": 1}, [])
    scores.write_shard("00000", _scores_table())
    scores.finalize(["00000"])
    pairs = ArtifactWriter(
        storage, join(root, "pairs"), "pairs", {"pair_min_margin": 1.0}, [Artifact.open(storage, join(root, "scores"))]
    )
    rows = PAIRS + [("img0", "yes, there is a man", "no", 24.0, 20.0)]
    pairs.write_shard(
        "00000",
        pa.table(
            {
                "image_id": [r[0] for r in rows],
                "kind": ["caption"] * len(PAIRS) + ["qa"],
                "prompt": ["p"] * len(rows),
                "chosen": [r[1] for r in rows],
                "rejected": [r[2] for r in rows],
                "chosen_score": pa.array([r[3] for r in rows], pa.float32()),
                "rejected_score": pa.array([r[4] for r in rows], pa.float32()),
                "margin": pa.array([r[3] - r[4] for r in rows], pa.float32()),
                "image_uri": ["x"] * len(rows),
            }
        ),
        {**FUNNEL, "seconds": 0.5},
    )  # what the filter's shards record besides the funnel
    pairs.finalize(["00000"], summarize=sum_stats)
    model = join(root, "model")
    storage.write_bytes(join(model, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in TRAIN_ROWS).encode())
    storage.write_bytes(
        join(model, "train_summary.json"),
        json.dumps({"config": {"beta": 0.1}, "final": TRAIN_ROWS[-1], "steps": 4}).encode(),
    )
    images = {1: join(root, "bench", "AMBER_1.jpg"), 2: join(root, "bench", "AMBER_2.jpg")}
    storage.write_bytes(images[1], jpeg((30, 160, 30)))
    storage.write_bytes(images[2], jpeg((30, 30, 200), size=(300, 200)))
    results = {"base": {"amber": _amber(10.0, 40.0, 70.0, 75.0)}, "clip-dpo": {"amber": _amber(6.0, 25.0, 74.0, 80.0)}}
    for model_name, items in EXAMPLES.items():
        results[model_name]["amber"]["examples"] = [{**item, "image": images[item["id"]]} for item in items]
    metrics = {
        "complete": True,
        "baseline": "base",
        "models": [{"name": "base"}, {"name": "clip-dpo"}],
        "results": results,
        "resources": {"amber_nlp": "test NLP"},
        "effects": {
            "clip-dpo": {
                "amber.generative.chair": {"delta": -4.0, "ci95": [-6.5, -1.5], "resamples": 1000, "images": 2}
            }
        },
    }
    storage.write_bytes(join(root, "evaluation", "metrics.json"), json.dumps(metrics).encode())
    return root
