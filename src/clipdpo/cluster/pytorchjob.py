"""Build a Kubeflow Training Operator PyTorchJob (kubeflow.org/v1) for `python -m clipdpo.train`.

One Master and nodes-1 Workers, each a pod with `gpus_per_node` GPUs running torchrun. The
operator injects the rendezvous settings (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR/PORT) that
torchrun reads from its environment. The container must be named `pytorch`: the operator finds
it by that name. S3 credentials come from a Secret through envFrom; /dev/shm is a memory-backed
volume because the default 64 MiB breaks NCCL and data loading.

Gang scheduling: `gang=True` sets runPolicy.schedulingPolicy.minAvailable to every replica, so a
gang scheduler (Volcano or scheduler-plugins, enabled in the operator) starts all pods or none;
`queue_name` puts the job in a Kueue LocalQueue, which admits it only when quota for all of it
exists.

Failures: a failed container restarts in its pod (OnFailure) and training resumes from its last complete S3
checkpoint. The rendezvous is static (torchrun's default: fixed --nnodes, rank 0's store), so one lost rank
takes the whole world down: the others end at their next collective (an NCCL error, or the collective timeout;
TORCH_NCCL_ASYNC_ERROR_HANDLING tears them down) and restart too, and all meet again at the Master. torchrun's
own --max-restarts stays 0: it restarts the processes of one node only, which a static world cannot take back.
The operator adds up the container restarts of every pod and fails the job once the sum reaches
runPolicy.backoffLimit, so one recovery costs a restart per node: see `restart_budget`.
"""

from __future__ import annotations

import copy

from clipdpo import __version__

# TrainJobSpec, job_name, launch_label, LABEL_*: re-exported, callers import them from here too
from clipdpo.cluster.jobspec import (  # noqa: F401
    CONTAINER_SECURITY,
    LABEL_APP,
    LABEL_KEY,
    VOLUME_MOUNTS,
    TrainJobSpec,
    example_manifest,
    job_metadata,
    job_name,
    launch_label,
    plain_env,
    pod_labels,
    pod_spec_extras,
    resources,
)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER_NAME = "pytorch"  # required by the Training Operator


def _container(spec: TrainJobSpec) -> dict:
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "torchrun",
            f"--nnodes={spec.nodes}",
            f"--nproc-per-node={spec.procs_per_node}",
            "-m",
            "clipdpo.train",
        ],
        "args": list(spec.train_args),
        "env": plain_env(spec),
        "envFrom": [{"secretRef": {"name": spec.s3_secret}}],
        "resources": resources(spec),
        "volumeMounts": [dict(m) for m in VOLUME_MOUNTS],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }


def _pod_template(spec: TrainJobSpec, role: str) -> dict:
    extras = pod_spec_extras(spec)
    pod_spec = {"serviceAccountName": extras.pop("serviceAccountName"), "containers": [_container(spec)], **extras}
    return {"metadata": {"labels": pod_labels(spec, role)}, "spec": pod_spec}


def restart_budget(spec: TrainJobSpec) -> int:
    """runPolicy.backoffLimit that survives `spec.backoff_limit` failures of any pod: each failure restarts every
    node's container once, and the operator fails the job when the restarts of all pods add up to the limit
    (so one more than the restarts allowed)."""
    return spec.backoff_limit * spec.nodes + 1


def failures_survived(job: dict) -> int:
    """The failures of any pod a PyTorchJob survives, read back from its runPolicy.backoffLimit (the inverse of
    restart_budget): also the restarts one container may make before the operator ends the job."""
    pods = sum(replica["replicas"] for replica in job["spec"]["pytorchReplicaSpecs"].values())
    return max(int(job["spec"]["runPolicy"].get("backoffLimit", 0)) - 1, 0) // pods


def _run_policy(spec: TrainJobSpec) -> dict:
    policy = {
        "cleanPodPolicy": "Running",  # stop stragglers when the job ends; keep failed pods' logs
        "backoffLimit": restart_budget(spec),
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
    }
    if spec.gang:
        policy["schedulingPolicy"] = {"minAvailable": spec.nodes}  # Master + Workers: all or none
    return policy


def build(spec: TrainJobSpec) -> dict:
    """The PyTorchJob manifest as a plain dict (what the API server receives)."""
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": _pod_template(spec, "Master")}}
    if spec.nodes > 1:
        replicas["Worker"] = {
            "replicas": spec.nodes - 1,
            "restartPolicy": "OnFailure",
            "template": _pod_template(spec, "Worker"),
        }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job_metadata(spec),
        "spec": {
            "nprocPerNode": str(spec.procs_per_node),
            "runPolicy": _run_policy(spec),
            "pytorchReplicaSpecs": replicas,
        },
    }


def example_spec() -> TrainJobSpec:
    """The template shipped as k8s/pytorchjob/train-pytorchjob.yaml (2 nodes x 8 GPUs)."""
    return TrainJobSpec(
        name="clipdpo-train-manual",
        namespace="clipdpo",
        image=f"ghcr.io/clipdpo/clipdpo-train:{__version__}",
        train_args=[
            "--input",
            "s3://YOUR-BUCKET/runs/RUN/pairs",
            "--output",
            "s3://YOUR-BUCKET/runs/RUN/model",
            "--set",
            "model=llava-hf/llava-1.5-7b-hf",
            "--set",
            "per_device_batch_size=4",
        ],
        nodes=2,
        gpus_per_node=8,
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )


def render_example() -> str:
    return example_manifest(
        build(example_spec()), "PyTorchJob", "k8s/pytorchjob/train-pytorchjob.yaml", "clipdpo.cluster.pytorchjob"
    )


if __name__ == "__main__":
    print(render_example(), end="")
