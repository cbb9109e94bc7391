"""The shuffled-score control arm: CLIP scores shuffled among each image's captions before the filter.

Every filter rule still applies (thresholds, length rule, text down-sampling), but which caption is
"chosen" no longer follows CLIP: pairs become random. If CLIP-DPO's effect comes from CLIP's
ranking, the control does not show it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.storage import Storage


def shuffled_scores(
    image_ids: list[str], kinds: list[str], scores: np.ndarray, seed: int, texts: list[str] | None = None
) -> np.ndarray:
    """`scores` with the caption rows' values permuted within each image (QA rows untouched).

    With `texts`, the permutation runs over each image's distinct caption texts, and every copy of a text
    keeps one score: sampled captions repeat (the world LVLM says the same short sentence several times),
    and a row-wise shuffle would give two copies of one text different scores, so the filter would pair a
    caption with itself and drop the pair as identical; the control would then train on fewer pairs than
    CLIP-DPO, for a reason that is not the ranking.
    """
    out = np.array(scores, dtype=np.float64, copy=True)
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, list[int]]] = {}
    for row, (image_id, kind) in enumerate(zip(image_ids, kinds)):
        if kind == "caption":
            key = texts[row] if texts is not None else str(row)
            groups.setdefault(image_id, {}).setdefault(key, []).append(row)
    for by_text in groups.values():
        copies = list(by_text.values())
        values = [out[rows[0]] for rows in copies]  # copies of one text were scored alike by CLIP
        for rows, source in zip(copies, rng.permutation(len(copies))):
            out[rows] = values[source]
    return out


def write_shuffled(scores_uri: str, output_uri: str, seed: int = 0, storage: Storage | None = None) -> str:
    """A scores artifact at `output_uri` equal to `scores_uri` but for the shuffled caption scores."""
    storage = storage or Storage()
    source = Artifact.open(storage, scores_uri, kind="scores")
    writer = ArtifactWriter(storage, output_uri, "scores", {"control": "shuffled", "seed": seed}, [source])
    names = []
    for index, (name, table) in enumerate(source.iter_shards()):
        column = table.schema.get_field_index("clip_score")
        values = shuffled_scores(
            table.column("image_id").to_pylist(),
            table.column("kind").to_pylist(),
            table.column("clip_score").to_numpy(zero_copy_only=False),
            seed + index,
            texts=table.column("text").to_pylist(),
        )
        table = table.set_column(column, table.schema.field(column), pa.array(values, table.schema.field(column).type))
        writer.write_shard(name, table)
        names.append(name)
    writer.finalize(names)
    return output_uri
