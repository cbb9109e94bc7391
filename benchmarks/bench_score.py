"""make bench (scoring part): work per image in the score stage.

Builds candidates with many captions and questions per image for the built-in images, runs
the score stage with the tiny CLIP, and reports image encodes per image (must be 1: each
image is decoded and encoded once however many candidates it has) and unique texts encoded
per text scored. Results: bench-results/score.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from clipdpo import ingest, score
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.demo import models as tiny
from clipdpo.schemas import CANDIDATES
from clipdpo.score.scorer import ScorerConfig
from clipdpo.storage import Storage

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="clipdpo-bench-score-"))
    try:
        models = tiny.build_all(str(work / "models"))
        storage = Storage()
        ingest.run(ingest.IngestConfig(source="builtin:demo", shard_size=5), None, str(work / "images"))
        images = Artifact.open(storage, str(work / "images"), kind="images")
        writer = ArtifactWriter(storage, str(work / "candidates"), "candidates", {"bench": 1}, [images])
        captions_per_image, questions_per_image = 25, 4
        for name in images.shard_names:
            rows = []
            for image_id in images.read_shard(name, columns=["image_id"]).column("image_id").to_pylist():
                for k in range(captions_per_image):
                    text = f"a photo number {k % 10} of {image_id}"  # repeats: unique texts < rows
                    rows.append(
                        dict.fromkeys(CANDIDATES.names)
                        | dict(
                            image_id=image_id,
                            candidate_id=f"{image_id}/c{k}",
                            kind="caption",
                            model="m",
                            prompt_id=k % 5,
                            prompt="Describe.",
                            text=text,
                        )
                    )
                for q in range(questions_per_image):
                    rows.append(
                        dict.fromkeys(CANDIDATES.names)
                        | dict(
                            image_id=image_id,
                            candidate_id=f"{image_id}/q{q}",
                            kind="qa",
                            model="llm",
                            prompt_id=q,
                            prompt="What is in the image?",
                            question="What is in the image?",
                            answer_pos=f"thing {q}",
                            answer_neg=f"other {q}",
                        )
                    )
            writer.write_shard(name, pa.Table.from_pylist(rows, schema=CANDIDATES))
        writer.finalize(images.shard_names)
        config = ScorerConfig(
            model_name=tiny.TINY_CLIP_NAME, pretrained=None, model_config_dir=models["clip_config_dir"]
        )
        started = time.monotonic()
        stats = score.run(config, str(work / "candidates"), str(work / "scores"))
        seconds = time.monotonic() - started
        result = {
            "images": stats["images"],
            "candidate_rows": stats["rows_in"],
            "image_encodes": stats["image_encodes"],
            "image_encodes_per_image": stats["image_encodes"] / stats["images"],
            "texts_scored": stats["texts_scored"],
            "unique_text_encodes": stats["text_encodes"],
            "seconds_tiny_clip_cpu": round(seconds, 2),
        }
        (ROOT / "bench-results").mkdir(exist_ok=True)
        (ROOT / "bench-results" / "score.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0 if result["image_encodes_per_image"] == 1.0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
