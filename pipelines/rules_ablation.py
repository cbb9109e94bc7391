"""python -m pipelines.rules_ablation: the paper's pair rules on and off, on a finished world run (issue 17).

A pair is kept when its CLIP-score margin is over 2.0 and the shorter caption has at least 0.75 of the
longer one's words (Sec. 4.2; `filter.pair_min_margin`, `filter.pair_min_length_ratio`). This reuses
a run of `make pipeline-run` (its scored captions, and its trained model `clipdpo`, which is the
paper's rules) and reruns only filter -> train per variant of VARIANTS, each under
`<run_root>-rules-<variant>`, in this process through the same step functions the components call.
Then one AMBER evaluation of base, clipdpo and every variant goes to `<run_root>-rules/evaluation`; base's
and clipdpo's responses are copied there from the run's own evaluation first (responses are keyed
and resumable), so only the variants are inferred. Prints the table and writes it to
`<state-dir>/reports/<run-id>/rules.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from clipdpo.storage import Storage, join

# What each variant changes in the run's filter config (the paper's rules: the run itself, `clipdpo`).
VARIANTS: dict[str, dict] = {
    "no-margin": {"pair_min_margin": 0.0},  # any score difference (ties still give no pair)
    "no-length": {"pair_min_length_ratio": 0.0},  # any length
    "neither": {"pair_min_margin": 0.0, "pair_min_length_ratio": 0.0},
}
LABELS = {"base": "base (no DPO)", "clipdpo": "paper rules (margin > 2, length >= 0.75)",
          "no-margin": "no margin rule", "no-length": "no length rule", "neither": "neither rule"}


def variant_root(run_root: str, variant: str) -> str:
    return f"{run_root.rstrip('/')}-rules-{variant}"


def ablation_root(run_root: str) -> str:
    return f"{run_root.rstrip('/')}-rules"


def copy_scores(source: str, output: str, storage: Storage) -> None:
    """The run's scores artifact, unchanged, as a variant's own (its filter reads `<root>/scores`)."""
    from clipdpo.artifacts import Artifact, ArtifactWriter

    scores = Artifact.open(storage, source, kind="scores")
    writer = ArtifactWriter(storage, output, "scores", {"copy_of": source}, [scores])
    if writer.is_complete():
        return
    for name, table in scores.iter_shards():
        writer.write_shard(name, table)
    writer.finalize(list(scores.shard_names))


def copy_responses(source_eval: str, target_eval: str, models: list[str], storage: Storage) -> int:
    """Every saved response chunk of `models` from one evaluation folder to another; how many chunks."""
    copied = 0
    for model in models:
        prefix = join(source_eval, "responses", model)
        for uri in storage.list(prefix):
            target = join(target_eval, "responses", model, uri[len(prefix):].lstrip("/"))
            if not storage.exists(target):
                storage.write_bytes(target, storage.read_bytes(uri))
                copied += 1
    return copied


def train_variant(configs: dict[str, dict], run_root: str, variant: str, say=print) -> int:
    """Filter (the variant's rules) and train under the variant's root; the number of pairs."""
    from clipdpo import steps
    from clipdpo.artifacts import Artifact

    storage, root = Storage(), variant_root(run_root, variant)
    copy_scores(steps.artifact_uri(run_root, "score"), steps.artifact_uri(root, "score"), storage)
    say(f"rules ablation, {variant}: filter {json.dumps(VARIANTS[variant])} ...")
    steps.filter_step(root, json.dumps({**configs["filter"], **VARIANTS[variant]}))
    pairs = Artifact.open(storage, steps.artifact_uri(root, "filter"), kind="pairs").manifest.rows
    say(f"rules ablation, {variant}: train on {pairs} pairs ...")
    steps.train_step(root, json.dumps(configs["train"]), launcher="local")
    return pairs


def evaluate_variants(configs: dict[str, dict], base: str, run_root: str) -> dict:
    """base, clipdpo and every variant in one evaluation under the ablation root; its metrics.json."""
    from clipdpo import steps
    from pipelines.world_run import evaluate_models

    storage, target = Storage(), ablation_root(run_root)
    models = evaluate_models(base, run_root)  # base and clipdpo, as the run named them
    models += [{**models[1], "name": variant, "path": join(steps.artifact_uri(variant_root(run_root, variant),
                                                                               "train"), "model")}
               for variant in VARIANTS]
    copy_responses(steps.artifact_uri(run_root, "evaluate"), steps.artifact_uri(target, "evaluate"),
                   ["base", "clipdpo"], storage)
    evaluate = {**configs["evaluate"], "models": models, "zero_shot": None, "suite": []}  # the table is AMBER's
    steps.evaluate_step(target, steps.artifact_uri(run_root, "train"), json.dumps(configs["train"]),
                        json.dumps(evaluate))
    return json.loads(storage.read_bytes(join(steps.artifact_uri(target, "evaluate"), "metrics.json")))


def table(metrics: dict, pairs: dict[str, int]) -> str:
    """The ablation as a Markdown table: pairs, and AMBER's headline figures with the cut against base."""
    from clipdpo.world.effect import summary

    found = summary(metrics)  # metrics.json sorts its keys: the table keeps base, the paper, then VARIANTS
    rows = {name: found[name] for name in ["base", "clipdpo", *VARIANTS] if name in found}
    base = rows["base"]
    out = ["| Pair rules | Pairs | CHAIR ↓ | Hal ↓ | Cover ↑ | F1 | AMBER score |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        cut = lambda key: "" if name == "base" or not base[key] else f" ({(row[key] / base[key] - 1) * 100:+.0f}%)"  # noqa: E731
        out.append(f"| {LABELS.get(name, name)} | {pairs.get(name, '–')} | {row['chair']:.1f}{cut('chair')} | "
                   f"{row['hal']:.1f}{cut('hal')} | {row['cover']:.1f} | {row['f1']:.1f} | {row['amber_score']:.2f} |")
    return "\n".join(out)


def run(args) -> int:
    from clipdpo import steps
    from clipdpo.artifacts import Artifact, ArtifactError
    from pipelines.world_run import world_configs

    run_root = args.run_root or f"s3://{args.bucket}/runs/{args.run_id}"
    try:  # the run first: a missing run should not wait for a world build
        pairs = {"clipdpo": Artifact.open(Storage(), steps.artifact_uri(run_root, "filter"), kind="pairs").manifest.rows}
        Artifact.open(Storage(), steps.artifact_uri(run_root, "score"), kind="scores")
    except ArtifactError as err:
        raise SystemExit(f"{run_root}: no finished world run to reuse ({err}); run `make pipeline-run "
                         f"WORLD={args.world} RUN_ID={args.run_id}` first") from None
    configs, world = world_configs(args.world, str(Path(args.world_cache or Path(args.state_dir) / "world").resolve()),
                                   run_root)
    started = time.monotonic()
    pairs.update({variant: train_variant(configs, run_root, variant) for variant in VARIANTS})
    text = table(evaluate_variants(configs, world.lvlm, run_root), pairs)
    report = Path(args.state_dir) / "reports" / args.run_id / "rules.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text + "\n")
    print(f"\nrules ablation on world {args.world}, run {args.run_id}, {time.monotonic() - started:.0f}s "
          f"(also in {report}):\n{text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.rules_ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", required=True, help="the finished world run to reuse")
    parser.add_argument("--world", type=int, required=True, help="its world seed")
    parser.add_argument("--bucket", default=os.environ.get("CLIPDPO_BUCKET", "clipdpo-local"))
    parser.add_argument("--run-root", default="", help="default s3://<bucket>/runs/<run-id>")
    parser.add_argument("--state-dir", default=".local", help="the local run's state (its S3 data in <state-dir>/s3)")
    parser.add_argument("--world-cache", default=os.environ.get("CLIPDPO_WORLD_CACHE", ""),
                        help="where worlds are cached (default <state-dir>/world)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if os.environ.get("AWS_ENDPOINT_URL"):
        return run(args)
    from clipdpo import s3server

    server = s3server.start(str(Path(args.state_dir, "s3").resolve()))
    os.environ.update(server.env)
    try:
        return run(args)
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
