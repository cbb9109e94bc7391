"""python -m clipdpo.score --input CANDIDATES_URI --output SCORES_URI [--set key=value ...]"""

from __future__ import annotations

import argparse
import json

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.score.scorer import ClipScorer, ScorerConfig
from clipdpo.score.shard import score_shard
from clipdpo.stage import add_common_args, print_summary, run_shards, setup_logging
from clipdpo.storage import Storage


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m clipdpo.score", description=__doc__)
    parser.add_argument("--input", required=True, help="candidates artifact URI")
    add_common_args(parser)
    args = parser.parse_args(argv)
    storage = Storage()
    cfg = config_lib.load(ScorerConfig, args.config, args.overrides, lambda uri: storage.read_bytes(uri).decode())
    if args.dry_run:
        print(json.dumps(config_lib.to_dict(cfg), indent=2))
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


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
