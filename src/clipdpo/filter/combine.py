"""Several pairs artifacts as one (the `both` method: CLIP-DPO pairs plus POVID's in one training run).

The union is its own artifact (manifest, sha256 per shard); each source shard is copied as
`<label>-<shard name>`, so the shard names of the sources never clash and a row id still says where
it came from. Idempotent like every stage: the same sources (by fingerprint) give the same artifact.
"""

from __future__ import annotations

from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.stage import ShardSpec, run_shards
from clipdpo.storage import Storage


def combine_pairs(sources: dict[str, str], output: str, storage: Storage | None = None, overwrite: bool = False) -> str:
    """`sources`: label -> pairs artifact URI; writes their union at `output` and returns it (`overwrite`: replace
    a union made from other sources)."""
    storage = storage or Storage()
    if not sources:
        raise ValueError("combine_pairs: no pairs artifacts to combine")
    opened = {label: Artifact.open(storage, uri, kind="pairs") for label, uri in sources.items()}
    writer = ArtifactWriter(
        storage, output, "pairs", {"combined": sorted(sources)}, list(opened.values()), overwrite=overwrite
    )
    origin = {
        f"{label}-{name}": (artifact, name) for label, artifact in opened.items() for name in artifact.shard_names
    }

    def process(name: str):
        artifact, source_name = origin[name]
        table = artifact.read_shard(source_name)
        return table, {f"pairs_{name.split('-', 1)[0]}": table.num_rows}

    run_shards(writer, list(origin), process, ShardSpec())
    return writer.uri
