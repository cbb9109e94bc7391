"""Each pipeline step's headline numbers, read back from what the step wrote (so any way of running a stage
gives the same numbers): the kfp components log them as their `Metrics` output, which the KFP UI shows.

ingest/generate/score/filter: rows, shards and the stage's own counters (the filter's per-rule funnel;
score also the mean CLIP score per image category); a shard step: its own shards' counters; train: the
final loss, reward accuracy and margin, samples/s; evaluate: every number of every model's results;
report: the run's headline.
"""

from __future__ import annotations

import contextlib
import json
import math
import time

import pyarrow.compute as pc

from clipdpo import outputref, stages
from clipdpo.artifacts import Artifact, ShardRecord
from clipdpo.stage import ShardSpec, sum_stats
from clipdpo.storage import NotFound, Storage, join
from clipdpo.tracking import numeric

KINDS = {"ingest": "images", "generate": "candidates", "score": "scores", "filter": "pairs"}
TRAIN_FINAL = (
    ("loss", "final_loss"),
    ("rewards/accuracy", "reward_accuracy"),
    ("rewards/margin", "reward_margin"),
    ("samples_per_s", "samples_per_s"),
    ("tokens_per_s", "tokens_per_s"),
)


def artifact_uri(run_root: str, name: str) -> str:
    """(as clipdpo.steps.artifact_uri, not imported from there: its lazy cluster imports would join every
    image that imports this module, see clipdpo.cluster.imagetags)"""
    return join(run_root, stages.stage(name).artifact)


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if math.isfinite(v)}


def artifact_metrics(storage: Storage, stage: str, run_root: str) -> dict[str, float]:
    artifact = Artifact.open(storage, artifact_uri(run_root, stage), kind=KINDS[stage])
    out = {"rows": float(artifact.manifest.rows), "shards": float(len(artifact.shard_names))}
    out.update(numeric(artifact.manifest.stats))
    if stage == "score":
        out.update(category_means(artifact))
    return out


def shard_metrics(storage: Storage, stage: str, run_root: str, shard_index: int, shard_count: int) -> dict[str, float]:
    """The counters of the shards this step (shard_index of shard_count) wrote: their done-records under
    `_done/<fingerprint>/`. Several fingerprint folders exist only while an --overwrite run is under way;
    then the folder holding most of this step's shards is the one read."""
    source = stages.stage(stage).input
    if source is None:
        raise ValueError(f"stage {stage!r} reads no upstream artifact: it has no shards to count")
    upstream = Artifact.open(storage, artifact_uri(run_root, source))
    wanted = set(ShardSpec(int(shard_index), int(shard_count)).select(upstream.shard_names))
    folders: dict[str, list[str]] = {}
    for uri in storage.list(join(artifact_uri(run_root, stage), "_done")):
        folder, _, file = uri.rpartition("/")
        if file.endswith(".json") and file[: -len(".json")] in wanted:
            folders.setdefault(folder, []).append(uri)
    chosen = max(folders.values(), key=len) if folders else []
    records = [ShardRecord(**json.loads(storage.read_bytes(uri))) for uri in sorted(chosen)]
    out = {"rows": float(sum(r.rows for r in records)), "shards": float(len(records))}
    out.update(numeric(sum_stats(records)))
    return out


def category_means(scores: Artifact) -> dict[str, float]:
    """Mean caption CLIP score per image category over the whole artifact."""
    sums: dict[str, list[float]] = {}
    for _, table in scores.iter_shards(columns=["kind", "category", "clip_score"]):
        captions = pc.and_(pc.equal(table.column("kind"), "caption"), pc.is_valid(table.column("clip_score")))
        table = table.filter(captions)
        grouped = table.group_by("category").aggregate([("clip_score", "sum"), ("clip_score", "count")])
        for category, total, count in zip(
            *(grouped.column(c).to_pylist() for c in ("category", "clip_score_sum", "clip_score_count"))
        ):
            entry = sums.setdefault(category or "unknown", [0.0, 0])
            entry[0] += total
            entry[1] += count
    return {f"mean_clip_score.{c}": total / count for c, (total, count) in sorted(sums.items()) if count}


def train_metrics(storage: Storage, run_root: str) -> dict[str, float]:
    summary = json.loads(storage.read_bytes(join(artifact_uri(run_root, "train"), "train_summary.json")))
    final = summary.get("final") or {}
    out = {name: float(final[key]) for key, name in TRAIN_FINAL if final.get(key) is not None}
    out.update({k: float(summary[k]) for k in ("steps", "seconds") if summary.get(k) is not None})
    return out


def evaluate_metrics(storage: Storage, run_root: str) -> dict[str, float]:
    return evaluation_numbers(artifact_uri(run_root, "evaluate"), storage)


def evaluation_numbers(evaluation: str, storage: Storage | None = None) -> dict[str, float]:
    """Every number of every model's results in the evaluation at `evaluation` (a step's reference or a folder);
    {} for "" or none there (no benchmarks configured: the step skipped evaluation)."""
    if not evaluation:
        return {}
    try:
        metrics = json.loads((storage or Storage()).read_bytes(join(outputref.plain(evaluation), "metrics.json")))
    except NotFound:
        return {}
    return _finite(numeric(metrics["results"]))


def gate_metrics(storage: Storage, run_root: str) -> dict[str, float]:
    """passed (1/0), pointer moved (1/0) and the number of failed checks, from the gate's decision record."""
    record = json.loads(storage.read_bytes(join(run_root, "gate", "decision.json")))
    return {
        "passed": float(record["passed"]),
        "promoted": float(record["pointer"]["moved"]),
        "failed_checks": float(sum(not check["passed"] for check in record["checks"])),
    }


def step_metrics(
    stage: str, run_root: str, *, shard: tuple[int, int] | None = None, storage: Storage | None = None
) -> dict[str, float]:
    """`shard`: (index, count) for a shard step; None for a stage's whole (finalized) artifact."""
    storage = storage or Storage()
    if stage in KINDS:
        values = (
            shard_metrics(storage, stage, run_root, *shard)
            if shard is not None
            else artifact_metrics(storage, stage, run_root)
        )
    elif stage == "train":
        values = train_metrics(storage, run_root)
    elif stage == "evaluate":
        values = evaluate_metrics(storage, run_root)
    elif stage in ("plan-evaluation", "evaluate-task"):
        values = {}  # their numbers are the merged evaluation's (the evaluate step)
    elif stage == "gate":
        values = gate_metrics(storage, run_root)
    elif stage == "report":
        from clipdpo.report import REPORT_DIR

        values = json.loads(storage.read_bytes(join(run_root, REPORT_DIR, "headline.json")))
    else:
        raise ValueError(
            f"step_metrics: unknown stage {stage!r}; expected one of "
            f"{sorted(KINDS) + ['evaluate', 'evaluate-task', 'gate', 'plan-evaluation', 'report', 'train']}"
        )
    return _finite(values)


def pairs_numbers(uri: str, storage: Storage | None = None) -> dict[str, float]:
    """A pairs artifact's rows and counters (the POVID source's kept/dropped); {} for "" (none made). `uri` may be
    a step's versioned reference (`<uri>#<version>`)."""
    if not uri:
        return {}
    artifact = Artifact.open(storage or Storage(), outputref.plain(uri), kind="pairs")
    return _finite({"rows": float(artifact.manifest.rows), **numeric(artifact.manifest.stats)})


def log_pairs(metrics_output, output: str, started: float) -> str:
    """What a pairs step (povid pairs, training pairs) calls last: the rows and counters of the pairs artifact it
    returned ({} when it made none) plus `step_seconds` (since `started`), on its `Output[Metrics]`; `output`."""
    log_to(metrics_output, {**pairs_numbers(output), "step_seconds": round(time.monotonic() - started, 3)})
    return output


def log_to(metrics_output, values: dict[str, float]) -> dict[str, float]:
    """Log `values` on a kfp `Output[Metrics]` and write them (JSON) to its file too: kfp's local runner
    counts an output artifact without a file as missing and never serves the step from its cache."""
    for key, value in sorted(values.items()):
        metrics_output.log_metric(key, value)
    with open(metrics_output.path, "w") as out:
        json.dump(dict(sorted(values.items())), out)
    return values


def log_step(
    metrics_output, stage: str, run_root: str, started: float, *, shard: tuple[int, int] | None = None
) -> dict[str, float]:
    """What a kfp component calls last: its stage's numbers plus `step_seconds` (since `started`, a
    time.monotonic() reading), logged on its `Output[Metrics]`."""
    values = step_metrics(stage, run_root, shard=shard)
    values["step_seconds"] = round(time.monotonic() - started, 3)
    return log_to(metrics_output, values)


@contextlib.contextmanager
def logged(metrics_output, stage: str, run_root: str, *, shard: tuple[int, int] | None = None):
    """`with logged(metrics, "filter", run_root): return filter_step(...)`: once the step's body has
    finished (not when it raised), its numbers go to its kfp `Output[Metrics]`."""
    started = time.monotonic()
    yield
    log_step(metrics_output, stage, run_root, started, shard=shard)
