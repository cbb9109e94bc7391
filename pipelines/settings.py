"""Compile-time settings: which images the components run, how GPU pods are placed, and the pods' cluster
values (pipelines/cluster_values.py: requests, limits, retries, timeouts, parallelism, queue, pull secrets, TTL).

Read from the environment so `make compile REGISTRY=... TAG=...` (and CI, and helm's clipdpo-settings ConfigMap)
choose them; the defaults compile a pipeline for the images `make images push` builds for this version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from clipdpo import __version__
from clipdpo.stages import IMAGES as STAGE_IMAGES
from pipelines.cluster_values import ClusterValues, values_from_env


@dataclass(frozen=True)
class PipelineSettings:
    registry: str = "ghcr.io/clipdpo"
    tag: str = __version__
    # per-stage content tags (`python -m clipdpo.cluster.imagetags --json`); a stage not named uses `tag`
    stage_tags: dict = field(default_factory=dict)
    s3_secret: str = "clipdpo-s3"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: dict = field(default_factory=dict)  # e.g. {"nvidia.com/gpu.present": "true"}
    gpu_tolerations: list = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    cluster: ClusterValues = field(default_factory=ClusterValues)  # CLIPDPO_CLUSTER_VALUES

    def image(self, stage: str) -> str:
        if stage not in STAGE_IMAGES:
            raise ValueError(f"no image for stage {stage!r}; images: {STAGE_IMAGES}")
        tag = self.stage_tags.get(stage, self.tag)
        if tag in ("", "latest"):
            raise ValueError(
                f"the {stage} image tag (CLIPDPO_IMAGE_TAG / CLIPDPO_IMAGE_TAGS) must pin a version, not 'latest'"
            )
        return f"{self.registry.rstrip('/')}/clipdpo-{stage}:{tag}"

    @classmethod
    def from_env(cls) -> "PipelineSettings":
        defaults = cls()
        return cls(
            registry=os.environ.get("CLIPDPO_REGISTRY", defaults.registry),
            tag=os.environ.get("CLIPDPO_IMAGE_TAG", defaults.tag),
            stage_tags=json.loads(os.environ.get("CLIPDPO_IMAGE_TAGS", "{}")),
            s3_secret=os.environ.get("CLIPDPO_S3_SECRET", defaults.s3_secret),
            gpu_resource=os.environ.get("CLIPDPO_GPU_RESOURCE", defaults.gpu_resource),
            gpu_node_selector=json.loads(os.environ.get("CLIPDPO_GPU_NODE_SELECTOR", "{}")),
            gpu_tolerations=json.loads(os.environ.get("CLIPDPO_GPU_TOLERATIONS", json.dumps(defaults.gpu_tolerations))),
            cluster=values_from_env(),
        )


SETTINGS = PipelineSettings.from_env()

# Keys of the S3 Secret (helm/clipdpo creates it) and the env vars boto3 reads.
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
S3_OPTIONAL_KEYS = {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"}
# Experiment tracking (clipdpo.tracking), from an optional ConfigMap: train and evaluate read it, and the
# train step passes it on to the training job's pods.
TRACKING_CONFIG_MAP = "clipdpo-tracking"
TRACKING_KEYS = {key: key for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "CLIPDPO_TENSORBOARD")}
