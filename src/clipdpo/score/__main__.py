"""python -m clipdpo.score --input CANDIDATES_URI --output SCORES_URI [--set key=value ...]"""

from __future__ import annotations


from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.score.scorer import ClipScorer, ScorerConfig
from clipdpo.score.shard import score_shard
from clipdpo.stage import build_parser, entry_point, load_config, print_summary, run_shards
from clipdpo.storage import Storage


def run(argv: list[str] | None = None) -> dict:
    args = build_parser("python -m clipdpo.score", __doc__, "candidates artifact URI").parse_args(argv)
    storage = Storage()
    cfg = load_config(ScorerConfig, args, storage)
    if cfg is None:
        return {}
    candidates = Artifact.open(storage, args.input, kind="candidates")
    images = candidates.upstream("images")
    # Device and batch sizes change speed, not scores: keep them out of the fingerprint.
    identity = {k: v for k, v in config_lib.to_dict(cfg).items()
                if k not in ("device", "image_batch_size", "text_batch_size")}
    writer = ArtifactWriter(storage, args.output, "scores", identity, [candidates, images],
                            overwrite=args.overwrite)
    scorer: list[ClipScorer] = []  # built lazily: a finished or resumed run needs no model

    def process(name: str):
        if not scorer:
            scorer.append(ClipScorer(cfg))
        return score_shard(candidates.read_shard(name), images.read_shard(name), scorer[0])

    result = run_shards(writer, candidates.shard_names, process, args.shard, finalize_only=args.finalize)
    stats = result.manifest.stats if result.manifest else {}
    extra = {"output": writer.uri}
    if stats.get("images"):
        extra["image_encodes_per_image"] = round(stats["image_encodes"] / max(1, stats["images"] - stats["images_failed"]), 3)
        extra["images_failed"] = stats["images_failed"]
    print_summary("score", result, extra)
    return stats


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
