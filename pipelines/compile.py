"""python -m pipelines.compile [OUT.yaml]: write the pipeline spec (IR YAML) for the current settings (images from
CLIPDPO_REGISTRY / CLIPDPO_IMAGE_TAG(S), pod values from CLIPDPO_CLUSTER_VALUES: pipelines/settings.py)."""

from __future__ import annotations

import sys

from kfp import compiler

from pipelines.clipdpo_pipeline import build_pipeline
from pipelines.cluster_values import ClusterValues
from pipelines.settings import SETTINGS

DEFAULT_OUT = "pipelines/compiled/clipdpo.yaml"


def compile_pipeline(path: str = DEFAULT_OUT, values: ClusterValues | None = None) -> str:
    """Write the spec to `path` with `values` (None: the settings' values, CLIPDPO_CLUSTER_VALUES)."""
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pipeline = build_pipeline(values if values is not None else SETTINGS.cluster)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT))
