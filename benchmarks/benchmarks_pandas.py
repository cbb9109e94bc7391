"""The peer for the filter bench: the same rules written the straightforward pandas way.

Reads every shard of a scores artifact (local path), applies the rules with DataFrame
masks, a self-merge per image for candidate pairs and a groupby for the top pair, and
writes the (image_id, chosen, rejected) of every pair to a Parquet file for comparison.
Down-sampling uses the same per-image hash as clipdpo so the outputs can be compared.
"""

import sys

import pandas as pd
import pyarrow.parquet as pq

from clipdpo.artifacts import Artifact
from clipdpo.filter.rules import hash_unit_interval
from clipdpo.filter.select import FilterConfig
from clipdpo.storage import Storage


def pandas_pairs(df: pd.DataFrame, cfg: FilterConfig) -> pd.DataFrame:
    text_ids = df.loc[df["category"] == cfg.text_category, "image_id"].unique()
    keep_ids = set(text_ids[hash_unit_interval(list(text_ids), cfg.downsample_seed) < cfg.text_keep_fraction])
    df = df[(df["category"] != cfg.text_category) | df["image_id"].isin(keep_ids)]
    caps = df[
        (df["kind"] == "caption")
        & (df["text"].str.strip().str.len() > 0)
        & (df["clip_score"] >= cfg.caption_min_score)
        & (df["clip_tokens"] <= df["clip_context"])
    ]
    caps = caps.reset_index(drop=True)
    caps["row"] = caps.index
    merged = caps.merge(caps, on="image_id", suffixes=("_a", "_b"))
    merged = merged[merged["row_a"] < merged["row_b"]]
    diff = merged["clip_score_a"] - merged["clip_score_b"]
    shorter = merged[["n_words_a", "n_words_b"]].min(axis=1)
    longer = merged[["n_words_a", "n_words_b"]].max(axis=1)
    ratio = (shorter / longer).where(longer > 0, 0.0)
    merged = merged[(diff.abs() > cfg.pair_min_margin) & (ratio >= cfg.pair_min_length_ratio)].copy()
    merged["margin"] = (merged["clip_score_a"] - merged["clip_score_b"]).abs()
    a_wins = merged["clip_score_a"] >= merged["clip_score_b"]
    merged["chosen"] = merged["text_a"].where(a_wins, merged["text_b"])
    merged["rejected"] = merged["text_b"].where(a_wins, merged["text_a"])
    merged = merged.sort_values(["image_id", "margin", "row_a", "row_b"], ascending=[True, False, True, True])
    top = merged.groupby("image_id", sort=False).head(cfg.pairs_per_image)
    return top[["image_id", "chosen", "rejected"]]


def main(scores_uri: str, out_path: str) -> None:
    cfg = FilterConfig()
    artifact = Artifact.open(Storage(), scores_uri, kind="scores")
    parts = []
    for _, table in artifact.iter_shards(
        columns=["image_id", "kind", "category", "text", "clip_score", "clip_tokens", "clip_context", "n_words"]
    ):
        parts.append(pandas_pairs(table.to_pandas(), cfg))
    result = pd.concat(parts, ignore_index=True)
    pq.write_table(__import__("pyarrow").Table.from_pandas(result, preserve_index=False), out_path)
    print(len(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
