"""Build a Kubeflow Training Operator PyTorchJob (kubeflow.org/v1) for `python -m clipdpo.train`.

One Master and nodes-1 Workers, each a pod with `gpus_per_node` GPUs running torchrun. The
operator injects the rendezvous settings (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR/PORT) that
torchrun reads from its environment. The container must be named `pytorch`: the operator finds
it by that name. S3 credentials come from a Secret through envFrom; /dev/shm is a memory-backed
volume because the default 64 MiB breaks NCCL and data loading.
"""

from __future__ import annotations

import hashlib
import re

from clipdpo import __version__
from dataclasses import dataclass, field

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER_NAME = "pytorch"  # required by the Training Operator
LABEL_APP = "app.kubernetes.io/name"
LABEL_KEY = "clipdpo.dev/launch-key"


@dataclass
class TrainJobSpec:
    name: str
    namespace: str
    image: str
    train_args: list[str]  # arguments of `python -m clipdpo.train`
    nodes: int = 1
    gpus_per_node: int = 8
    cpu: str = "16"
    memory: str = "256Gi"
    shm_size: str = "64Gi"
    s3_secret: str = "clipdpo-s3"
    service_account: str = "clipdpo-train"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    active_deadline_seconds: int = 7 * 24 * 3600
    backoff_limit: int = 3
    ttl_seconds_after_finished: int = 3600
    labels: dict[str, str] = field(default_factory=dict)
    owner: dict | None = None  # ownerReference (the pipeline step's pod): the job dies with it

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.name):
            raise ValueError(f"job name {self.name!r} is not a valid Kubernetes name (lower case, digits, '-', <= 63)")
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if ":" not in self.image.rsplit("/", 1)[-1] and "@" not in self.image:
            raise ValueError(f"image {self.image!r} has no tag: pin a version")
        if self.image.endswith(":latest"):
            raise ValueError(f"image {self.image!r}: pin a version, not latest")


def job_name(launch_key: str, prefix: str = "clipdpo-train") -> str:
    """A stable name per launch key (pipeline run + output): a restarted step finds its own job."""
    return f"{prefix}-{hashlib.sha256(launch_key.encode()).hexdigest()[:12]}"


def launch_label(launch_key: str) -> str:
    """The value of LABEL_KEY on a job: tells our own job (re-attach) from a name clash."""
    return hashlib.sha256(launch_key.encode()).hexdigest()[:40]


def _container(spec: TrainJobSpec) -> dict:
    procs = max(spec.gpus_per_node, 1)
    resources = {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": {"memory": spec.memory}}
    if spec.gpus_per_node:
        resources["requests"]["nvidia.com/gpu"] = spec.gpus_per_node
        resources["limits"]["nvidia.com/gpu"] = spec.gpus_per_node
    env = [{"name": "CLIPDPO_SCRATCH", "value": "/scratch"}, {"name": "HF_HOME", "value": "/scratch/hf"}]
    env += [{"name": key, "value": value} for key, value in sorted(spec.env.items())]
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["torchrun", f"--nnodes={spec.nodes}", f"--nproc-per-node={procs}", "-m", "clipdpo.train"],
        "args": list(spec.train_args),
        "env": env,
        "envFrom": [{"secretRef": {"name": spec.s3_secret}}],
        "resources": resources,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": "/scratch"}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }


def _pod_template(spec: TrainJobSpec, role: str) -> dict:
    pod_spec = {
        "serviceAccountName": spec.service_account,
        "containers": [_container(spec)],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    labels = {LABEL_APP: "clipdpo", "app.kubernetes.io/component": f"train-{role.lower()}", **spec.labels}
    return {"metadata": {"labels": labels}, "spec": pod_spec}


def build(spec: TrainJobSpec) -> dict:
    """The PyTorchJob manifest as a plain dict (what the API server receives)."""
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": _pod_template(spec, "Master")}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure",
                              "template": _pod_template(spec, "Worker")}
    metadata = {"name": spec.name, "namespace": spec.namespace,
                "labels": {LABEL_APP: "clipdpo", "app.kubernetes.io/component": "train", **spec.labels}}
    if spec.owner:
        metadata["ownerReferences"] = [dict(spec.owner)]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(max(spec.gpus_per_node, 1)),
            "runPolicy": {
                "cleanPodPolicy": "Running",  # stop stragglers when the job ends; keep failed pods' logs
                "backoffLimit": spec.backoff_limit,
                "activeDeadlineSeconds": spec.active_deadline_seconds,
                "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


def example_spec() -> TrainJobSpec:
    """The template shipped as k8s/pytorchjob/train-pytorchjob.yaml (2 nodes x 8 GPUs)."""
    return TrainJobSpec(
        name="clipdpo-train-manual", namespace="clipdpo", image=f"ghcr.io/clipdpo/clipdpo-train:{__version__}",
        train_args=["--input", "s3://YOUR-BUCKET/runs/RUN/pairs", "--output", "s3://YOUR-BUCKET/runs/RUN/model",
                    "--set", "model=llava-hf/llava-1.5-7b-hf", "--set", "per_device_batch_size=4"],
        nodes=2, gpus_per_node=8,
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


def render_example() -> str:
    import yaml

    header = ("# PyTorchJob for a manual training run (the pipeline builds the same object itself):\n"
              "#   kubectl create -f k8s/pytorchjob/train-pytorchjob.yaml\n"
              "# Generated by `python -m clipdpo.cluster.pytorchjob`; edit the spec there, not here.\n")
    return header + yaml.safe_dump(build(example_spec()), sort_keys=False)


if __name__ == "__main__":
    print(render_example(), end="")
