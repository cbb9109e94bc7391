"""python -m clipdpo_lab measure --seed N --run-root DIR: build (or reuse) world N, run every stage on it in
this process (local folders under --run-root) and print base vs CLIP-DPO vs the shuffled control, with the
world's exact CHAIR/Hal/Cover of sampled captions beside the evaluate stage's AMBER."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdpo_lab measure", description=__doc__)
    parser.add_argument("--out", default=".local/world", help="world cache folder (one subfolder per world)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--run-root", required=True, help="a folder for the run's artifacts")
    args = parser.parse_args(argv)
    from clipdpo import determinism

    determinism.apply_env(determinism.CpuPins(threads=args.threads))  # before torch loads: the components inherit
    from clipdpo_lab import localrun
    from clipdpo_lab.effect import run_control, run_stages, sampled_metrics, summary
    from clipdpo_world import data
    from clipdpo_world.__main__ import build_world
    from clipdpo_world.clip import WorldBuildError

    try:
        paths = build_world(args.seed, args.out, args.threads)
    except WorldBuildError as err:
        print(f"world build refused: {err}", file=sys.stderr)
        return 1
    run_root = str(Path(args.run_root).resolve())
    measured = run_stages(paths, run_root, say=lambda line: print(line, flush=True))
    results = summary(measured["metrics"])
    results["control"] = summary(run_control(paths, run_root))["control"]
    heldout = data.scenes(args.seed, "heldout", len(data.read_truth(str(Path(paths.root, "heldout")))))
    models = {
        "base": paths.lvlm,
        "clipdpo": localrun.model_uri(run_root),
        "control": localrun.model_uri(localrun.arm_root(run_root, "control")),
    }
    sampled = {name: sampled_metrics(path, heldout) for name, path in models.items()}
    print(
        json.dumps(
            {
                "world": paths.root,
                "checks": paths.checks,
                "seconds": measured["seconds"],
                "amber": results,
                "amber_decoding": measured["metrics"]["resources"].get("amber_decoding"),
                "sampled_exact": sampled,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
