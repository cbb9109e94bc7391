"""make bench: the filter stage over 15M synthetic scored captions (3M images x 5), one process.

Reports rows/s and peak RSS for clipdpo's filter and, in the same run, for a straightforward
pandas version of the same rules (benchmarks/benchmarks_pandas.py); checks both select the same
pairs; runs clipdpo's filter on half the input too, to show memory stays flat as input grows.
Results: bench-results/filter.json and a table on stdout.

    python benchmarks/bench_filter.py [--images 3000000] [--captions-per-image 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipdpo.artifacts import Artifact, ArtifactWriter, shard_name
from clipdpo.schemas import SCORES
from clipdpo.storage import Storage

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
WORDS = "a the dog cat man woman red blue sofa table street park holding sitting near under small large".split()


def synth_shard(first_image: int, n_images: int, per_image: int, rng: np.random.Generator) -> pa.Table:
    n = n_images * per_image
    image_index = np.repeat(np.arange(first_image, first_image + n_images), per_image)
    image_ids = pa.array(np.char.add("img", image_index.astype(str)))
    templates = [" ".join(rng.choice(WORDS, size=k)) for k in rng.integers(6, 30, size=2000)]
    template_words = np.array([len(t.split()) for t in templates], dtype=np.int32)
    pick = rng.integers(0, len(templates), size=n)
    text = pa.array(templates).take(pa.array(pick))
    category = pa.array(["text", "people", "objects", "scenes"]).take(
        pa.array(np.repeat(rng.integers(0, 4, size=n_images), per_image))
    )
    none_str = pa.nulls(n, pa.string())
    columns = {
        "image_id": image_ids,
        "candidate_id": image_ids,
        "kind": pa.array(np.full(n, "caption")),
        "model": pa.array(np.full(n, "m")),
        "prompt_id": pa.array(np.tile(np.arange(per_image, dtype=np.int32), n_images)),
        "prompt": pa.array(np.full(n, "Describe the image.")),
        "text": text,
        "question": none_str,
        "answer_pos": none_str,
        "answer_neg": none_str,
        "temperature": pa.array(np.full(n, 0.7, np.float32)),
        "top_p": pa.array(np.full(n, 0.9, np.float32)),
        "max_new_tokens": pa.array(np.full(n, 128, np.int32)),
        "seed": pa.array(np.zeros(n, np.int64)),
        "clip_score": pa.array(rng.normal(30.0, 3.0, size=n).astype(np.float32)),
        "clip_tokens": pa.array((template_words[pick] * 1.3 + 2).astype(np.int32)),
        "clip_context": pa.array(np.full(n, 77, np.int32)),
        "n_words": pa.array(template_words[pick]),
        "category": category,
        "category_score": pa.array(np.full(n, 25.0, np.float32)),
        "question_score": pa.nulls(n, pa.float32()),
        "qa_caption": none_str,
        "qa_caption_score": pa.nulls(n, pa.float32()),
        "qa_neg_caption_score": pa.nulls(n, pa.float32()),
    }
    return pa.table(columns, schema=SCORES)


def make_scores(uri: str, images: int, per_image: int, images_per_shard: int) -> None:
    storage = Storage()
    # Pairs point at their images shard: give the synthetic scores an (empty) images artifact upstream.
    images_writer = ArtifactWriter(storage, uri + "-images", "images", {"synthetic": True}, [])
    images_writer.finalize([])
    upstream = Artifact.open(storage, uri + "-images", kind="images")
    writer = ArtifactWriter(storage, uri, "scores", {"synthetic": [images, per_image, images_per_shard]}, [upstream])
    if writer.is_complete():
        return
    names = []
    rng = np.random.default_rng(0)
    for k, first in enumerate(range(0, images, images_per_shard)):
        name = shard_name(k)
        names.append(name)
        if writer.done_record(name) is None:
            writer.write_shard(name, synth_shard(first, min(images_per_shard, images - first), per_image, rng))
    writer.finalize(names)


def measured(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, its stdout."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    out, err = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024.0, out


def pair_keys(table: pa.Table) -> set:
    return set(zip(*(table.column(c).to_pylist() for c in ("image_id", "chosen", "rejected"))))


def rules_only(scores_uri: str, shards: int = 4) -> dict:
    """The rules alone, both ways, on the same in-memory shards (no Parquet I/O, no export)."""
    from benchmarks_pandas import pandas_pairs

    from clipdpo.filter.select import RULE_COLUMNS, FilterConfig, filter_shard

    cfg = FilterConfig()
    artifact = Artifact.open(Storage(), scores_uri, kind="scores")
    ours = theirs = 0.0
    rows = 0
    for name in artifact.shard_names[:shards]:
        table = artifact.read_shard(name, columns=RULE_COLUMNS)
        rows += table.num_rows
        t = time.perf_counter()
        filter_shard(table, cfg, "u")
        ours += time.perf_counter() - t
        frame = table.to_pandas()  # conversion not charged to pandas
        t = time.perf_counter()
        pandas_pairs(frame, cfg)
        theirs += time.perf_counter() - t
    return {
        "rows": rows,
        "clipdpo_rows_per_s": round(rows / ours),
        "pandas_rows_per_s": round(rows / theirs),
        "speedup": round(theirs / ours, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3_000_000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--images-per-shard", type=int, default=50_000)
    parser.add_argument("--work-dir", default=str(ROOT / "bench-results" / "filter-data"))
    args = parser.parse_args()
    work = Path(args.work_dir)
    results = {}
    sizes = {"half": args.images // 2, "full": args.images}
    for label, images in sizes.items():
        uri = str(work / f"scores-{images}")
        t = time.monotonic()
        make_scores(uri, images, args.captions_per_image, args.images_per_shard)
        print(
            f"synthetic scores ({label}): {images * args.captions_per_image:,} rows ready in "
            f"{time.monotonic() - t:.0f}s at {uri}",
            flush=True,
        )
        out_uri = str(work / f"pairs-{images}")
        shutil.rmtree(out_uri, ignore_errors=True)  # a finished output would make the run a no-op
        seconds, rss, out = measured([sys.executable, "-m", "clipdpo.filter", "--input", uri, "--output", out_uri])
        assert json.loads(out.strip().splitlines()[-1])["skipped_shards"] == 0, "the timed run must do the work"
        rows = images * args.captions_per_image
        results[f"clipdpo_{label}"] = {
            "rows": rows,
            "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds),
            "peak_rss_mb": round(rss),
        }
        print(json.dumps({f"clipdpo_{label}": results[f"clipdpo_{label}"]}), flush=True)
    full_uri = str(work / f"scores-{args.images}")
    pandas_out = str(work / "pandas-pairs.parquet")
    seconds, rss, _ = measured(
        [sys.executable, str(ROOT / "benchmarks" / "benchmarks_pandas.py"), full_uri, pandas_out]
    )
    rows = args.images * args.captions_per_image
    results["pandas_full"] = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(rss),
    }
    ours = Artifact.open(Storage(), str(work / f"pairs-{args.images}"), kind="pairs")
    ours_keys = set()
    for _, table in ours.iter_shards(columns=["image_id", "chosen", "rejected"]):
        ours_keys |= pair_keys(table)
    theirs_keys = pair_keys(pq.read_table(pandas_out))
    results["same_pairs"] = ours_keys == theirs_keys
    results["rules_only"] = rules_only(full_uri)
    results["pairs"] = len(ours_keys)
    results["speedup_vs_pandas"] = round(results["pandas_full"]["seconds"] / results["clipdpo_full"]["seconds"], 2)
    results["memory_growth_half_to_full"] = round(
        results["clipdpo_full"]["peak_rss_mb"] / results["clipdpo_half"]["peak_rss_mb"], 3
    )
    Path(ROOT / "bench-results").mkdir(exist_ok=True)
    (ROOT / "bench-results" / "filter.json").write_text(json.dumps(results, indent=2))
    print("\n| run | rows | seconds | rows/s | peak RSS MB |\n|---|---|---|---|---|")
    for key in ("clipdpo_half", "clipdpo_full", "pandas_full"):
        r = results[key]
        print(f"| {key} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']:,} | {r['peak_rss_mb']} |")
    print(
        f"\nspeed-up vs pandas: {results['speedup_vs_pandas']}x (goal >= 10x); same pairs: {results['same_pairs']} "
        f"({results['pairs']:,}); peak memory full/half: {results['memory_growth_half_to_full']} (goal: flat)"
    )
    r = results["rules_only"]
    print(
        f"rules alone on the same in-memory shards ({r['rows']:,} rows): clipdpo {r['clipdpo_rows_per_s']:,} rows/s, "
        f"pandas {r['pandas_rows_per_s']:,} rows/s: {r['speedup']}x"
    )
    return 0 if results["same_pairs"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
