"""A run's numbers for its report, read from the artifacts under the run root; any stage may be missing.

Only the columns the figures need are read (scores: image, kind, category, CLIP score); the pairs are
capped at `max_pairs` (the first ones, in shard order), so a report of a large run stays small and fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipdpo.artifacts import Artifact, ArtifactError
from clipdpo.report.step_metrics import artifact_uri
from clipdpo.storage import NotFound, Storage, join

MAX_PAIRS = 20000


@dataclass
class PairColumns:
    """Caption pairs as plain columns, one entry per pair."""

    chosen_score: list[float] = field(default_factory=list)
    rejected_score: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    chosen_words: list[int] = field(default_factory=list)
    rejected_words: list[int] = field(default_factory=list)
    category: list[str] = field(default_factory=list)


@dataclass
class RoundData:
    """One round of a run of several (clipdpo.rounds): its verdict, the pairs it kept, its captions' CLIP scores."""

    index: int
    passed: bool | None  # against the round before (round 1: the base); None: not judged (no evaluation)
    pairs: int | None  # rows of the round's pairs artifact; None when it is gone
    caption_scores: list[float] = field(default_factory=list)  # the first `max_pairs` captions' scores


@dataclass
class RunData:
    run_root: str
    train_rows: list[dict] = field(default_factory=list)  # metrics.jsonl, one per step
    train_summary: dict = field(default_factory=dict)
    funnel: dict = field(default_factory=dict)
    margin_threshold: float | None = None
    pairs: PairColumns = field(default_factory=PairColumns)
    widest_margins: list[float] = field(default_factory=list)  # best - worst caption score, per image
    evaluation: dict | None = None  # the evaluate stage's metrics.json
    stage_rows: dict[str, int] = field(default_factory=dict)  # rows in each tabular artifact
    rounds: list[RoundData] = field(default_factory=list)  # a run of several rounds: each (<run_root>/rounds.json)

    @property
    def beta(self) -> float | None:
        return self.train_summary.get("config", {}).get("beta")


def _json(storage: Storage, uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except NotFound:
        return None


def _open(storage: Storage, uri: str, kind: str) -> Artifact | None:
    try:
        return Artifact.open(storage, uri, kind=kind)
    except (NotFound, ArtifactError):
        return None


def word_counts(column: pa.ChunkedArray | pa.Array) -> list[int]:
    return pc.fill_null(pc.list_value_length(pc.utf8_split_whitespace(column)), 0).to_pylist()


def caption_pairs(pairs: Artifact, max_pairs: int) -> pa.Table:
    tables, count = [], 0
    for _, table in pairs.iter_shards(
        columns=["image_id", "kind", "chosen", "rejected", "chosen_score", "rejected_score", "margin"]
    ):
        table = table.filter(pc.equal(table.column("kind"), "caption"))
        tables.append(table.slice(0, max_pairs - count))
        count += tables[-1].num_rows
        if count >= max_pairs:
            break
    return pa.concat_tables(tables) if tables else pa.table({})


def caption_scores(scores: Artifact, limit: int) -> list[float]:
    """The CLIP scores of the artifact's captions (the first `limit`, in shard order)."""
    out: list[float] = []
    for _, table in scores.iter_shards(columns=["kind", "clip_score"]):
        captions = pc.and_(pc.equal(table.column("kind"), "caption"), pc.is_valid(table.column("clip_score")))
        out.extend(float(v) for v in table.filter(captions).column("clip_score").to_pylist()[: limit - len(out)])
        if len(out) >= limit:
            break
    return out


def rounds_data(storage: Storage, run_root: str, limit: int) -> list[RoundData]:
    """Each round of a run of several (its record `<run_root>/rounds.json`), [] for a one-round run."""
    from clipdpo.rounds import ROUNDS_RECORD, round_root

    record = _json(storage, join(run_root, ROUNDS_RECORD))
    out = []
    for each in (record or {}).get("rounds", []):
        root = round_root(run_root, each["round"])
        pairs = _open(storage, artifact_uri(root, "filter"), "pairs")
        scores = _open(storage, artifact_uri(root, "score"), "scores")
        out.append(
            RoundData(
                each["round"],
                each["passed"],
                pairs.manifest.rows if pairs is not None else None,
                caption_scores(scores, limit) if scores is not None else [],
            )
        )
    return out


def scores_by_image(scores: Artifact) -> tuple[dict[str, str], list[float]]:
    """Each image's category, and each image's widest caption margin (best - worst CLIP score)."""
    categories: dict[str, str] = {}
    widest: list[float] = []
    for _, table in scores.iter_shards(columns=["image_id", "kind", "category", "clip_score"]):
        captions = pc.and_(pc.equal(table.column("kind"), "caption"), pc.is_valid(table.column("clip_score")))
        table = table.filter(captions)
        grouped = table.group_by("image_id", use_threads=False).aggregate(
            [("clip_score", "max"), ("clip_score", "min"), ("clip_score", "count"), ("category", "first")]
        )
        counts = grouped.column("clip_score_count").to_numpy()
        spread = grouped.column("clip_score_max").to_numpy() - grouped.column("clip_score_min").to_numpy()
        widest.extend(float(v) for v in spread[counts >= 2])
        categories.update(zip(grouped.column("image_id").to_pylist(), grouped.column("category_first").to_pylist()))
    return categories, widest


def pair_columns(table: pa.Table, categories: dict[str, str]) -> PairColumns:
    if table.num_rows == 0:
        return PairColumns()
    floats = lambda name: [float(v) for v in table.column(name).to_numpy(zero_copy_only=False)]  # noqa: E731
    return PairColumns(
        chosen_score=floats("chosen_score"),
        rejected_score=floats("rejected_score"),
        margin=floats("margin"),
        chosen_words=word_counts(table.column("chosen")),
        rejected_words=word_counts(table.column("rejected")),
        category=[categories.get(i) or "unknown" for i in table.column("image_id").to_pylist()],
    )


def train_rows(storage: Storage, model_uri: str) -> list[dict]:
    try:
        text = storage.read_bytes(join(model_uri, "metrics.jsonl")).decode()
    except NotFound:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def gather(run_root: str, storage: Storage | None = None, max_pairs: int = MAX_PAIRS) -> RunData:
    storage = storage or Storage()
    run = RunData(run_root=run_root)
    for stage, kind in (("ingest", "images"), ("generate", "candidates"), ("score", "scores"), ("filter", "pairs")):
        artifact = _open(storage, artifact_uri(run_root, stage), kind)
        if artifact is not None:
            run.stage_rows[stage] = artifact.manifest.rows
    model_uri = artifact_uri(run_root, "train")
    run.train_rows = train_rows(storage, model_uri)
    run.train_summary = _json(storage, join(model_uri, "train_summary.json")) or {}
    run.evaluation = _json(storage, join(artifact_uri(run_root, "evaluate"), "metrics.json"))
    run.rounds = rounds_data(storage, run_root, max_pairs)
    pairs = _open(storage, artifact_uri(run_root, "filter"), "pairs")
    if pairs is None:
        return run
    run.funnel = dict(pairs.manifest.stats)
    run.margin_threshold = pairs.manifest.config.get("pair_min_margin")
    scores = _open(storage, artifact_uri(run_root, "score"), "scores")
    categories, run.widest_margins = scores_by_image(scores) if scores is not None else ({}, [])
    run.pairs = pair_columns(caption_pairs(pairs, max_pairs), categories)
    return run


def by_category(pairs: PairColumns) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for category, chosen, rejected in zip(pairs.category, pairs.chosen_score, pairs.rejected_score):
        out.setdefault(category, ([], []))
        out[category][0].append(chosen)
        out[category][1].append(rejected)
    return out


def mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class Example:
    """One held-out image with each model's description and the words AMBER's scorer called hallucinated."""

    item_id: int
    image: bytes | None  # a JPEG thumbnail; None when the image could not be read
    responses: dict[str, tuple[str, list[str]]]  # model -> (description, hallucinated object words)


def thumbnail(data: bytes, size: int = 224) -> bytes:
    import io

    from clipdpo.images import decode_image

    image = decode_image(data)  # upright and in RGB, as every stage sees it
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def examples(evaluation: dict | None, storage: Storage) -> list[Example]:
    """AMBER's qualitative items (the same ids for every model), in id order, with image thumbnails."""
    if not evaluation:
        return []
    by_id: dict[int, dict] = {}
    for model in [m["name"] for m in evaluation.get("models", [])]:
        for item in evaluation["results"].get(model, {}).get("amber", {}).get("examples") or []:
            entry = by_id.setdefault(int(item["id"]), {"image": item.get("image"), "responses": {}})
            entry["responses"][model] = (item["response"], list(item["hallucinated"]))
    out = []
    for item_id, entry in sorted(by_id.items()):
        image = None
        if entry["image"]:
            try:
                image = thumbnail(storage.read_bytes(entry["image"]))
            except (NotFound, OSError):
                image = None
        out.append(Example(item_id, image, entry["responses"]))
    return out
