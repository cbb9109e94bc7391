"""What the world ablations share (`make rules-ablation`, `make loss-ablation`).

An ablation reuses a finished world run of `make pipeline-run`: its trained model `clipdpo` (the paper's
choice) is one row, and each variant of the ablation is trained under `<run_root>-<name>-<variant>` in this
process, through the same step functions the components call; the run's own outputs are only read. Then one
AMBER evaluation of base, clipdpo and every variant goes to `<run_root>-<name>/evaluation`: base's and
clipdpo's responses are copied there from the run's own evaluation first (responses are keyed and
resumable), so only the variants are inferred. The table (pairs, CHAIR, Hal, Cover, F1, AMBER score per row)
is printed and written to `<state-dir>/reports/<run-id>/<name>.md`. A rerun reuses every finished variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipdpo.storage import Storage, join
from clipdpo_lab.localrun import arm_root, model_uri


@dataclass(frozen=True)
class Ablation:
    name: str  # "rules", "loss": in the variants' roots and the report's file name
    heading: str  # the table's first column
    variants: dict[str, dict]  # variant -> what it changes in the run's stage config
    labels: dict[str, str]  # a row's label: base, clipdpo (the run's own model) and each variant
    # (stage configs, run root, variant) -> the pairs it trained on; trains under variant_root
    train: Callable[[dict[str, dict], str, str], int]
    # (stage configs, run root): refuse a run whose model is not the row the table says it is
    check_run: Callable[[dict[str, dict], str], None] | None = None

    def variant_root(self, run_root: str, variant: str) -> str:
        return arm_root(run_root, f"{self.name}-{variant}")

    def root(self, run_root: str) -> str:
        """Where the ablation's evaluation goes."""
        return arm_root(run_root, self.name)


def copy_responses(source_eval: str, target_eval: str, models: list[str], storage: Storage) -> int:
    """Every saved response chunk of `models` from one evaluation folder to another; how many chunks."""
    copied = 0
    for model in models:
        prefix = join(source_eval, "responses", model)
        for uri in storage.list(prefix):
            target = join(target_eval, "responses", model, uri[len(prefix) :].lstrip("/"))
            if not storage.exists(target):
                storage.write_bytes(target, storage.read_bytes(uri))
                copied += 1
    return copied


def evaluate_variants(ablation: Ablation, configs: dict[str, dict], base: str, run_root: str) -> dict:
    """base, clipdpo and every variant in one evaluation under the ablation's root; its metrics.json."""
    from clipdpo import steps
    from clipdpo_lab.arms import evaluate_models

    storage, target = Storage(), ablation.root(run_root)
    models = evaluate_models(base, run_root)  # base and clipdpo, as the run named them
    models += [
        {**models[1], "name": variant, "path": model_uri(ablation.variant_root(run_root, variant))}
        for variant in ablation.variants
    ]
    copy_responses(
        steps.artifact_uri(run_root, "evaluate"), steps.artifact_uri(target, "evaluate"), ["base", "clipdpo"], storage
    )
    evaluate = {**configs["evaluate"], "models": models, "zero_shot": None, "suite": []}  # the table is AMBER's
    steps.evaluate_step(
        target, steps.artifact_uri(run_root, "train"), json.dumps(configs["train"]), json.dumps(evaluate)
    )
    return json.loads(storage.read_bytes(join(steps.artifact_uri(target, "evaluate"), "metrics.json")))


def cut(value: float, base: float) -> str:
    """The change against base in percent, e.g. " (-30%)" ("" when base is 0)."""
    return f" ({(value / base - 1) * 100:+.0f}%)" if base else ""


def table(ablation: Ablation, metrics: dict, pairs: dict[str, int]) -> str:
    """The ablation as a Markdown table: pairs, and AMBER's headline figures with the cut against base."""
    from clipdpo_lab.effect import summary

    found = summary(metrics)  # metrics.json sorts its keys: the table keeps base, the run's model, then variants
    rows = {name: found[name] for name in ["base", "clipdpo", *ablation.variants] if name in found}
    base = rows["base"]
    out = [
        f"| {ablation.heading} | Pairs | CHAIR ↓ | Hal ↓ | Cover ↑ | F1 | AMBER score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        chair, hal = (
            f"{row[key]:.1f}" + ("" if name == "base" else cut(row[key], base[key])) for key in ("chair", "hal")
        )
        out.append(
            f"| {ablation.labels.get(name, name)} | {pairs.get(name, '–')} | {chair} | {hal} | "
            f"{row['cover']:.1f} | {row['f1']:.1f} | {row['amber_score']:.2f} |"
        )
    return "\n".join(out)


def finished_run_pairs(run_root: str, args) -> int:
    """The finished run's pair count (its scores and pairs must be there), or a clear exit naming the run to make."""
    from clipdpo import steps
    from clipdpo.artifacts import Artifact, ArtifactError

    try:
        pairs = Artifact.open(Storage(), steps.artifact_uri(run_root, "filter"), kind="pairs").manifest.rows
        Artifact.open(Storage(), steps.artifact_uri(run_root, "score"), kind="scores")
    except ArtifactError as err:
        raise SystemExit(
            f"{run_root}: no finished world run to reuse ({err}); run `make pipeline-run "
            f"WORLD={args.world} RUN_ID={args.run_id}` first"
        ) from None
    return pairs


def run(ablation: Ablation, args) -> int:
    from clipdpo_lab.arms import world_configs

    run_root = args.run_root or f"s3://{args.bucket}/runs/{args.run_id}"
    pairs = {"clipdpo": finished_run_pairs(run_root, args)}  # the run first: a missing run should not wait for a world
    configs, world = world_configs(
        args.world, str(Path(args.world_cache or Path(args.state_dir) / "world").resolve()), run_root
    )
    if ablation.check_run is not None:
        ablation.check_run(configs, run_root)
    started = time.monotonic()
    pairs.update({variant: ablation.train(configs, run_root, variant) for variant in ablation.variants})
    text = table(ablation, evaluate_variants(ablation, configs, world.lvlm, run_root), pairs)
    report = Path(args.state_dir) / "reports" / args.run_id / f"{ablation.name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text + "\n")
    print(
        f"\n{ablation.name} ablation on world {args.world}, run {args.run_id}, {time.monotonic() - started:.0f}s "
        f"(also in {report}):\n{text}"
    )
    return 0


def main(ablation: Ablation, argv: list[str] | None, prog: str, description: str) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-id", required=True, help="the finished world run to reuse")
    parser.add_argument("--world", type=int, required=True, help="its world seed")
    parser.add_argument("--bucket", default=os.environ.get("CLIPDPO_BUCKET", "clipdpo-local"))
    parser.add_argument("--run-root", default="", help="default s3://<bucket>/runs/<run-id>")
    parser.add_argument("--state-dir", default=".local", help="the local run's state (its S3 data in <state-dir>/s3)")
    parser.add_argument(
        "--world-cache",
        default=os.environ.get("CLIPDPO_WORLD_CACHE", ""),
        help="where worlds are cached (default <state-dir>/world)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if os.environ.get("AWS_ENDPOINT_URL"):
        return run(ablation, args)
    from clipdpo import s3server

    server = s3server.start(str(Path(args.state_dir, "s3").resolve()))
    os.environ.update(server.env)
    try:
        return run(ablation, args)
    finally:
        server.stop()
