"""python -m pipelines.compile [OUT.yaml] [--rounds N]: write the pipeline spec (IR YAML) for the current settings
(images from CLIPDPO_REGISTRY / CLIPDPO_IMAGE_TAG(S), pod values from CLIPDPO_CLUSTER_VALUES: pipelines/settings.py);
--rounds: generate -> score -> filter -> train N times (clipdpo.rounds), fixed in the spec."""

from __future__ import annotations

import argparse

from kfp import compiler

from pipelines.clipdpo_pipeline import build_pipeline
from pipelines.cluster_values import ClusterValues
from pipelines.settings import SETTINGS

DEFAULT_OUT = "pipelines/compiled/clipdpo.yaml"


def compile_pipeline(path: str = DEFAULT_OUT, values: ClusterValues | None = None, rounds: int = 1) -> str:
    """Write the spec to `path` with `values` (None: the settings' values, CLIPDPO_CLUSTER_VALUES) and `rounds`."""
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pipeline = build_pipeline(values if values is not None else SETTINGS.cluster, rounds)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__)
    parser.add_argument("out", nargs="?", default=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of generate -> train (default 1)")
    args = parser.parse_args()
    print(compile_pipeline(args.out, rounds=args.rounds))
