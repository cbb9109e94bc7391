"""python -m clipdpo.world build|measure --out DIR --seed N

build: build (or reuse) a world and print where it lies; writes the stage configs for a pipeline run
on it to `<world>/configs/<stage>.json`, the layout `python -m pipelines.run --config-dir` reads.
measure: also run the stages on it in this process (ingest ... evaluate, local folders under
--run-root) and print base vs CLIP-DPO.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdpo.world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("build", "build the world's images, CLIP, LVLM and benchmark once"),
                       ("measure", "build, then run every stage on the world and print base vs CLIP-DPO")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--out", default=".local/world", help="cache folder (one subfolder per world)")
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--threads", type=int, default=1,
                             help="torch threads (1: a busy second core slows 2 threads ~10x)")
        if name == "measure":
            command.add_argument("--run-root", required=True, help="a folder for the run's artifacts")
    args = parser.parse_args(argv)

    import torch

    from clipdpo.world.build import WorldConfig, build
    from clipdpo.world.clip import WorldBuildError

    torch.set_num_threads(args.threads)
    spacy_model = os.environ.get("CLIPDPO_SPACY_MODEL")
    try:
        paths = build(WorldConfig(seed=args.seed), args.out,
                      spacy_model=str(Path(spacy_model).resolve()) if spacy_model else None,
                      say=lambda line: print(line, flush=True))
    except WorldBuildError as err:
        print(f"world build refused: {err}", file=sys.stderr)
        return 1
    config_dir = Path(paths.root, "configs")
    config_dir.mkdir(exist_ok=True)
    for stage, body in paths.configs.items():
        (config_dir / f"{stage}.json").write_text(json.dumps(body, indent=2))
    if args.command == "measure":
        from clipdpo.world.effect import run_stages, summary

        from clipdpo.storage import join
        from clipdpo.world import data
        from clipdpo.world.effect import run_control, sampled_metrics

        run_root = str(Path(args.run_root).resolve())
        measured = run_stages(paths, run_root, say=lambda line: print(line, flush=True))
        results = summary(measured["metrics"])
        results["control"] = summary(run_control(paths, run_root))["control"]
        heldout = data.scenes(args.seed, "heldout", len(data.read_truth(str(Path(paths.root, "heldout")))))
        models = {"base": paths.lvlm, "clipdpo": join(run_root, "model", "model"),
                  "control": join(run_root + "-control", "model", "model")}
        sampled = {name: sampled_metrics(path, heldout) for name, path in models.items()}
        print(json.dumps({"world": paths.root, "checks": paths.checks, "seconds": measured["seconds"],
                          "amber": results, "amber_decoding": measured["metrics"]["resources"].get("amber_decoding"),
                          "sampled_exact": sampled}, indent=2))
        return 0
    print(json.dumps({"root": paths.root, "images": paths.images, "clip": paths.clip, "lvlm": paths.lvlm,
                      "benchmarks": paths.benchmarks, "configs": str(config_dir), "checks": paths.checks}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
