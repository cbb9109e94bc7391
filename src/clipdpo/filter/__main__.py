"""python -m clipdpo.filter --input SCORES_URI --output PAIRS_URI [--set key=value ...]"""

from __future__ import annotations

import logging
import sys

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.filter.export import read_pair_images, trl_parquet
from clipdpo.filter.select import FUNNEL_ORDER, RULE_COLUMNS, FilterConfig, filter_shard
from clipdpo.stage import build_parser, entry_point, load_config, print_summary, run_shards
from clipdpo.storage import Storage, join

log = logging.getLogger("clipdpo.filter")


def format_funnel(stats: dict) -> str:
    width = max(len(key) for key in FUNNEL_ORDER)
    return "\n".join(f"  {key:<{width}}  {int(stats.get(key, 0)):>12,}" for key in FUNNEL_ORDER)


def kept_line(stats: dict, pairs: int) -> str:
    """One line with the outcome; with no pairs, which rules removed what (train refuses empty input)."""
    if pairs:
        return f"{pairs} pairs kept ({int(stats.get('caption_pairs', 0))} caption, {int(stats.get('qa_pairs', 0))} QA)"
    removed = ", ".join(f"{key[len('removed_'):]}={int(stats.get(key, 0))}" for key in FUNNEL_ORDER
                        if key.startswith("removed_"))
    counts = ", ".join(f"{key}={int(stats.get(key, 0))}" for key in
                       ("rows_in", "captions_kept", "qa_kept", "images_without_caption_pair"))
    return (f"0 pairs kept: {counts}; removed by rule: {removed}; "
            "loosen the thresholds (--set caption_min_score=..., pair_min_margin=...) or score more images")


def run(argv: list[str] | None = None) -> dict:
    args = build_parser("python -m clipdpo.filter", __doc__, "scores artifact URI").parse_args(argv)
    storage = Storage()
    cfg = load_config(FilterConfig, args, storage)
    if cfg is None:
        return {}
    scores = Artifact.open(storage, args.input, kind="scores")
    images = scores.upstream("images")
    writer = ArtifactWriter(storage, args.output, "pairs", config_lib.to_dict(cfg), [scores],
                            overwrite=args.overwrite)

    def process(name: str):
        table = scores.read_shard(name, columns=RULE_COLUMNS)
        pairs, funnel = filter_shard(table, cfg, images.shard_uri(name))
        # The TRL export lands before the shard's done-record: a finished shard has both.
        storage.write_bytes(writer.sidecar_uri("export/trl", f"{name}.parquet"),
                            trl_parquet(pairs, read_pair_images(storage, pairs)))
        return pairs, dict(funnel)

    result = run_shards(writer, scores.shard_names, process, args.shard, finalize_only=args.finalize)
    if result.manifest is not None:
        funnel = result.manifest.stats
        print("filter funnel (rows removed by each rule, in order):\n" + format_funnel(funnel), file=sys.stderr)
        severity = "WARNING" if result.manifest.rows == 0 else "INFO"
        print(f"filter {severity}: {kept_line(funnel, result.manifest.rows)}", file=sys.stderr)
        print(f"pairs: {writer.uri} ({result.manifest.rows} pairs; TRL dataset (Parquet, images embedded) under "
              f"{join(writer.uri, 'export', 'trl')}/)", file=sys.stderr)
    print_summary("filter", result, {"output": writer.uri})
    return result.manifest.stats if result.manifest else {}


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
