"""filter: the paper's global and pair filtering over score columns, into DPO pairs.

`run(cfg, scores_uri, output, ...)` writes one pairs shard (and its TRL dataset export) per scores shard.
"""

from __future__ import annotations

import sys

from clipdpo import config as config_lib
from clipdpo.artifacts import Artifact, ArtifactWriter
from clipdpo.filter.export import read_pair_images, trl_parquet
from clipdpo.filter.select import FUNNEL_ORDER, RULE_COLUMNS, FilterConfig, filter_shard
from clipdpo.stage import ShardSpec, report, run_shards
from clipdpo.storage import Storage, join


def format_funnel(stats: dict) -> str:
    width = max(len(key) for key in FUNNEL_ORDER)
    return "\n".join(f"  {key:<{width}}  {int(stats.get(key, 0)):>12,}" for key in FUNNEL_ORDER)


def kept_line(stats: dict, pairs: int) -> str:
    """One line with the outcome; with no pairs, which rules removed what (train refuses empty input)."""
    if pairs:
        return f"{pairs} pairs kept ({int(stats.get('caption_pairs', 0))} caption, {int(stats.get('qa_pairs', 0))} QA)"
    removed = ", ".join(
        f"{key[len('removed_') :]}={int(stats.get(key, 0))}" for key in FUNNEL_ORDER if key.startswith("removed_")
    )
    counts = ", ".join(
        f"{key}={int(stats.get(key, 0))}"
        for key in ("rows_in", "captions_kept", "qa_kept", "images_without_caption_pair")
    )
    return (
        f"0 pairs kept: {counts}; removed by rule: {removed}; "
        "loosen the thresholds (--set caption_min_score=..., pair_min_margin=...) or score more images"
    )


def run(
    cfg: FilterConfig,
    input: str,
    output: str,
    *,
    shard: ShardSpec = ShardSpec(),
    finalize: bool = False,
    overwrite: bool = False,
    storage: Storage | None = None,
) -> dict:
    """Pairs from every scores shard of `input` (this worker's share) into `output`; the funnel as stats."""
    storage = storage or Storage()
    scores = Artifact.open(storage, input, kind="scores")
    images = scores.upstream("images")
    writer = ArtifactWriter(storage, output, "pairs", config_lib.to_dict(cfg), [scores], overwrite=overwrite)
    export = join(writer.uri, "export", "trl")

    def process(name: str):
        pairs, funnel = filter_shard(scores.read_shard(name, columns=RULE_COLUMNS), cfg, images.shard_uri(name))
        # The TRL export lands before the shard's done-record: a finished shard has both.
        storage.write_bytes(
            writer.sidecar_uri("export/trl", f"{name}.parquet"), trl_parquet(pairs, read_pair_images(storage, pairs))
        )
        return pairs, dict(funnel)

    result = run_shards(writer, scores.shard_names, process, shard, finalize_only=finalize)
    if result.manifest is not None:
        funnel = result.manifest.stats
        print("filter funnel (rows removed by each rule, in order):\n" + format_funnel(funnel), file=sys.stderr)
        severity = "WARNING" if result.manifest.rows == 0 else "INFO"
        print(f"filter {severity}: {kept_line(funnel, result.manifest.rows)}", file=sys.stderr)
        print(
            f"pairs: {writer.uri} ({result.manifest.rows} pairs; TRL dataset (Parquet, images embedded) under "
            f"{export}/)",
            file=sys.stderr,
        )
    return report("filter", result, {"output": writer.uri})
