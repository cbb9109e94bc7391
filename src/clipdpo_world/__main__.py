"""python -m clipdpo_world build --out DIR --seed N

Build (or reuse) a world and print where it lies; writes the stage configs for a pipeline run on it to
`<world>/configs/<stage>.json`, the layout `python -m pipelines.run --config-dir` reads.
(`python -m clipdpo_lab measure` also runs the stages on it in this process.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def build_world(seed: int, out: str, threads: int = 1):
    """The world of `seed` built (or reused) under `out`, its stage configs written to `<world>/configs/`;
    its WorldPaths. Raises WorldBuildError when a model fails its self-check. The CPU code paths are pinned
    (clipdpo.determinism) when torch is not loaded yet, so machines of the same kind build the same world."""
    from clipdpo import determinism

    pins = determinism.CpuPins(threads=threads)
    if "torch" not in sys.modules:
        determinism.apply_env(pins)
    problems = determinism.apply_torch(pins)
    if problems:  # a world built on other code paths would be cached under the same key as a pinned one
        raise RuntimeError(f"world build: the CPU code paths are not pinned ({'; '.join(problems)})")
    from clipdpo_world.build import WorldConfig, build

    spacy_model = os.environ.get("CLIPDPO_SPACY_MODEL")
    paths = build(
        WorldConfig(seed=seed),
        out,
        spacy_model=str(Path(spacy_model).resolve()) if spacy_model else None,
        say=lambda line: print(line, flush=True),
    )
    config_dir = Path(paths.root, "configs")
    config_dir.mkdir(exist_ok=True)
    for stage, body in paths.configs.items():
        (config_dir / f"{stage}.json").write_text(json.dumps(body, indent=2))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipdpo_world", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("build", help="build the world's images, CLIP, LVLM and benchmark once")
    command.add_argument("--out", default=".local/world", help="cache folder (one subfolder per world)")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: a busy second core slows 2 threads ~10x)"
    )
    args = parser.parse_args(argv)
    from clipdpo import determinism

    determinism.apply_env(determinism.CpuPins(threads=args.threads))  # before anything imports torch
    from clipdpo_world.clip import WorldBuildError

    try:
        paths = build_world(args.seed, args.out, args.threads)
    except WorldBuildError as err:
        print(f"world build refused: {err}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "root": paths.root,
                "images": paths.images,
                "clip": paths.clip,
                "lvlm": paths.lvlm,
                "benchmarks": paths.benchmarks,
                "configs": str(Path(paths.root, "configs")),
                "checks": paths.checks,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
