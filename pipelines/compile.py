"""python -m pipelines.compile [OUT.yaml]: write the pipeline spec (IR YAML) for the current settings."""

from __future__ import annotations

import sys

from kfp import compiler

from pipelines.clipdpo_pipeline import clipdpo_pipeline

DEFAULT_OUT = "pipelines/compiled/clipdpo.yaml"


def compile_pipeline(path: str = DEFAULT_OUT) -> str:
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    compiler.Compiler().compile(pipeline_func=clipdpo_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT))
