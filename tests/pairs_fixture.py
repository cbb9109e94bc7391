"""Small images + pairs artifacts for training tests, written through the real artifact code."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from clipdpo.artifacts import Artifact, ArtifactWriter, shard_name
from clipdpo.storage import Storage, join

CHOSEN = [
    "a dog on a red sofa",
    "a cat sleeping near the window",
    "a man holding a cup of coffee",
    "two people walking in the park",
    "a rocket on the launch pad",
]
REJECTED = [
    "a phone on a green sofa",
    "a dog sleeping near the river",
    "a woman holding a flag",
    "two people riding a motorcycle",
    "a page of text with a title",
]


def png(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pairs(
    root: str,
    n_pairs: int = 32,
    n_shards: int = 2,
    bad_rows: dict[int, str] | None = None,
    storage: Storage | None = None,
    texts: list[tuple[str, str, str]] | None = None,
) -> str:
    """Images and pairs artifacts under `root`; returns the pairs URI. `bad_rows`: global row -> defect.
    `texts`: (prompt, chosen, rejected) per row instead of the fixed sentences."""
    storage = storage or Storage()
    bad_rows = bad_rows or {}
    images_uri, pairs_uri = join(root, "images"), join(root, "pairs")
    per_shard = -(-n_pairs // n_shards)
    names = [shard_name(s) for s in range(n_shards)]
    images_writer = ArtifactWriter(storage, images_uri, "images", {"test": n_pairs}, [])
    for s, name in enumerate(names):
        ids = [f"img{k:04d}" for k in range(s * per_shard, min(n_pairs, (s + 1) * per_shard))]
        ids = [i for i in ids if bad_rows.get(int(i[3:])) != "missing_image"]
        images_writer.write_shard(
            name,
            pa.table(
                {
                    "image_id": ids,
                    "source": ["test"] * len(ids),
                    "uri": ids,
                    "image": [png(int(i[3:])) for i in ids],
                    "width": pa.array([40] * len(ids), pa.int32()),
                    "height": pa.array([40] * len(ids), pa.int32()),
                }
            ),
        )
    images_writer.finalize(names)
    images = Artifact.open(storage, images_uri)
    pairs_writer = ArtifactWriter(
        storage, pairs_uri, "pairs", {"test": n_pairs, "bad": sorted(bad_rows.items())}, [images]
    )
    for s, name in enumerate(names):
        rows = range(s * per_shard, min(n_pairs, (s + 1) * per_shard))
        chosen, rejected, prompts = [], [], []
        for k in rows:
            if texts is not None:
                prompts.append(texts[k][0])
                chosen.append(texts[k][1])
                rejected.append(texts[k][2])
                continue
            chosen.append("" if bad_rows.get(k) == "empty_chosen" else CHOSEN[k % len(CHOSEN)])
            rejected.append(REJECTED[k % len(REJECTED)])
            prompts.append("describe the image " * 40 if bad_rows.get(k) == "long_prompt" else "describe the image")
        n = len(chosen)
        pairs_writer.write_shard(
            name,
            pa.table(
                {
                    "image_id": [f"img{k:04d}" for k in rows],
                    "kind": ["caption"] * n,
                    "prompt": prompts,
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_score": pa.array([30.0] * n, pa.float32()),
                    "rejected_score": pa.array([27.0] * n, pa.float32()),
                    "margin": pa.array([3.0] * n, pa.float32()),
                    "image_uri": [images.shard_uri(name)] * n,
                }
            ),
        )
    pairs_writer.finalize(names)
    return pairs_uri
