"""score: open_clip image-text scores (the judge: CLIP, SigLIP, noun-level), image categories, question and
check-caption scores.

`run(cfg, candidates_uri, output, ...)` writes one scores shard per candidates shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage

if TYPE_CHECKING:  # torch loads only when a stage really scores
    from clipdpo.score.scorer import ScorerConfig

# Device and batch sizes change speed, not scores: they stay out of the artifact's fingerprint.
SPEED_ONLY = ("device", "image_batch_size", "text_batch_size")


def score_identity(cfg: ScorerConfig) -> dict:
    """What the scores artifact's fingerprint hashes: the config less SPEED_ONLY, and the judge unless it is the
    default one (scores made before the judge was a setting are the same numbers, and keep their fingerprint)."""
    from clipdpo.score.scorer import JudgeConfig

    identity = {k: v for k, v in config_lib.to_dict(cfg).items() if k not in SPEED_ONLY}
    if cfg.judge == JudgeConfig():
        del identity["judge"]
    return identity


def run(
    cfg: ScorerConfig,
    input: str,
    output: str,
    *,
    shard: ShardSpec = ShardSpec(),
    finalize: bool = False,
    overwrite: bool = False,
    storage: Storage | None = None,
) -> dict:
    """Scores for every candidates shard of `input` (this worker's share) into `output`; its stats."""
    from clipdpo.score.scorer import ClipScorer
    from clipdpo.score.shard import score_shard

    storage = storage or Storage()
    candidates = Artifact.open(storage, input, kind="candidates")
    images = candidates.upstream("images")
    identity = score_identity(cfg)
    writer = ArtifactWriter(storage, output, "scores", identity, [candidates, images], overwrite=overwrite)
    scorer: list[ClipScorer] = []  # built lazily: a finished or resumed run needs no model

    def process(name: str):
        shard_candidates, shard_images = candidates.read_shard(name), images.read_shard(name)  # checked first
        if not scorer:
            scorer.append(ClipScorer(cfg))
        return score_shard(shard_candidates, shard_images, scorer[0])

    result = run_shards(writer, candidates.shard_names, process, shard, finalize_only=finalize)
    stats = result.manifest.stats if result.manifest else {}
    extra = {"output": writer.uri}
    if stats.get("images"):
        decoded = max(1, stats["images"] - stats["images_failed"])
        extra.update(
            image_encodes_per_image=round(stats["image_encodes"] / decoded, 3), images_failed=stats["images_failed"]
        )
    return report("score", result, extra)
