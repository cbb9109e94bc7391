"""Build a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) for `python -m clipdpo.train`,
and the project's own training runtime that helm and k8s/ install.

The TrainJob names a runtime (the project's `TrainingRuntime/clipdpo-torch` by default, or the stock
`torch-distributed` ClusterTrainingRuntime: a JobSet with one replicated job `node`, container `node`) and
says only what differs: image, command, args, env, node count, processes per node, resources. The runtime's
torch plugin injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT
into the `node` container; torchrun reads each PET_<FLAG> as the default of its --<flag>, so the command is
a bare `torchrun -m clipdpo.train` and the entry point sees the usual RANK/WORLD_SIZE/LOCAL_RANK from
torchrun. DeepSpeed runs inside those torchrun processes (not the MPI `deepspeed-distributed` runtime).

What a TrainJob cannot say (its container patch allows only env, volumeMounts, securityContext):
envFrom, so the S3 keys come one `secretKeyRef` each; restarts and TTL, which belong to the
runtime's JobSet (failurePolicy.maxRestarts, ttlSecondsAfterFinished): `build_runtime` writes
them (the stock torch-distributed runtime has none: its Job's default backoffLimit ends it). The project runtime is a
namespaced TrainingRuntime, so installing it needs rights in the runs' namespace only, not cluster-admin.
Pod placement, identity and volumes go in through `runtimePatches`.
"""

from __future__ import annotations

import copy

from clipdpo.cluster.jobspec import (
    CONTAINER_SECURITY,
    DEFAULT_RESTARTS,
    DEFAULT_RUNTIME,
    POD_SECURITY,
    PROJECT_RUNTIME_NAME,
    RUNTIME_KINDS,
    VOLUME_MOUNTS,
    TrainJobSpec,
    example_manifest,
    job_metadata,
    plain_env,
    pod_labels,
    pod_spec_extras,
    resources,
    runtime_ref,
    secret_env,
)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE_JOB = "node"  # the replicated job and container the torch runtime defines and injects PET_* into
CONTAINER_NAME = "node"
PATCH_MANAGER = "clipdpo.dev/launcher"
STOCK_RUNTIME = "torch-distributed"  # the Trainer's own torchrun runtime: no failurePolicy (see launch.launch)
TRAIN_COMMAND = ["torchrun", "-m", "clipdpo.train"]  # nnodes, nproc, rank, master: from PET_*
ANCESTOR_LABEL = {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
# The oldest Kubeflow Trainer whose TrainJob CRD has every field `build` writes: v2.2.0 brought runtimePatches
# (v2.1 had podTemplateOverrides) and activeDeadlineSeconds. Checked at submit (trainerversion.py).
MIN_TRAINER_VERSION = (2, 2, 0)


def _pod_patch(spec: TrainJobSpec) -> dict:
    """Pod template patch for the runtime's `node` job: identity, placement, volumes, mounts."""
    container = {
        "name": CONTAINER_NAME,
        "volumeMounts": [dict(m) for m in VOLUME_MOUNTS],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    pod = {
        "metadata": {"labels": pod_labels(spec, "node")},
        "spec": {**pod_spec_extras(spec), "containers": [container]},
    }
    job = {"name": NODE_JOB, "template": {"spec": {"template": pod}}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}


def build(spec: TrainJobSpec) -> dict:
    """The TrainJob manifest as a plain dict (what the API server receives)."""
    if spec.gang:
        raise ValueError(
            "a TrainJob is gang-scheduled by its runtime's podGroupPolicy or by Kueue: set "
            "queue_name, or run on a runtime with podGroupPolicy (helm trainingRuntime.gangTimeoutSeconds), "
            "not gang=True"
        )
    runtime_kind, runtime_name = runtime_ref(spec.runtime)
    trainer = {
        "image": spec.image,
        "command": list(TRAIN_COMMAND),
        "args": list(spec.train_args),
        "env": plain_env(spec) + secret_env(spec),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.procs_per_node,
        "resourcesPerNode": resources(spec),
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job_metadata(spec),
        "spec": {
            "runtimeRef": {"name": runtime_name, "apiGroup": GROUP, "kind": runtime_kind},
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "trainer": trainer,
            "runtimePatches": [_pod_patch(spec)],
        },
    }


def _runtime_node_job(image: str) -> dict:
    """The runtime's one replicated job, `node`: torchrun in a restricted pod (a TrainJob patches in the rest)."""
    pod = {
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [{"name": CONTAINER_NAME, "image": image, "securityContext": copy.deepcopy(CONTAINER_SECURITY)}],
    }
    # backoffLimit 0: a failed pod fails its Job at once, so every failure is one JobSet restart (all pods fresh,
    # from the last checkpoint) and maxRestarts counts failures as a PyTorchJob's backoff_limit does. The Job's
    # own default (6 pod failures, counted over every node: a lost node costs one per node) would be spent first,
    # in place, and survive a number of failures that depends on the node count.
    return {
        "name": NODE_JOB,
        "template": {
            "metadata": {"labels": dict(ANCESTOR_LABEL)},
            "spec": {"backoffLimit": 0, "template": {"spec": pod}},
        },
    }


def build_runtime(
    name: str,
    image: str,
    *,
    kind: str = "TrainingRuntime",
    max_restarts: int = DEFAULT_RESTARTS,
    ttl_seconds_after_finished: int = 3600,
    gang_timeout_seconds: int = 0,
) -> dict:
    """A training runtime (`kind`: TrainingRuntime, namespaced, or ClusterTrainingRuntime) like torch-distributed
    plus restarts, TTL and, optionally, coscheduling. A TrainingRuntime gets no namespace here: the one it is
    installed into (helm's release namespace, the kustomize overlay's) is the one TrainJobs find it in.

    `max_restarts`: the whole JobSet is recreated after a pod fails, up to this many times (the
    trainer resumes from its last S3 checkpoint). `gang_timeout_seconds` > 0 adds a coscheduling
    PodGroup (scheduler-plugins): all nodes start together or none, given up after that long.
    """
    spec = {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {
            "spec": {
                "failurePolicy": {"maxRestarts": max_restarts},
                "ttlSecondsAfterFinished": ttl_seconds_after_finished,
                "replicatedJobs": [_runtime_node_job(image)],
            }
        },
    }
    if gang_timeout_seconds > 0:
        spec["podGroupPolicy"] = {"coscheduling": {"scheduleTimeoutSeconds": gang_timeout_seconds}}
    if kind not in RUNTIME_KINDS:
        raise ValueError(f"runtime kind {kind!r}: expected one of {', '.join(RUNTIME_KINDS)}")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {
            "name": name,
            "labels": {"trainer.kubeflow.org/framework": "torch", "app.kubernetes.io/name": "clipdpo"},
        },
        "spec": spec,
    }


def render_example() -> str:
    from clipdpo.cluster.pytorchjob import example_spec

    return example_manifest(
        build(example_spec()),
        "TrainJob (Kubeflow Trainer v2)",
        "k8s/trainjob/train-trainjob.yaml",
        "clipdpo.cluster.trainjob",
    )


def render_runtime_example() -> str:
    """k8s/base/trainingruntime.yaml: the project runtime as kustomize installs it (the overlay sets the namespace)."""
    import yaml

    from clipdpo import __version__

    runtime = build_runtime(PROJECT_RUNTIME_NAME, f"ghcr.io/clipdpo/clipdpo-train:{__version__}")
    return (
        "# The project's TrainingRuntime (Kubeflow Trainer v2): torch-distributed plus restarts and a TTL. TrainJobs\n"
        f"# name it by default ({DEFAULT_RUNTIME}); the image is the TrainJob's own (trainer.image) in any case.\n"
        "# Generated by `python -m clipdpo.cluster.trainjob runtime`; edit build_runtime there, not here.\n"
        + yaml.safe_dump(runtime, sort_keys=False)
    )


if __name__ == "__main__":
    import sys

    print(render_runtime_example() if sys.argv[1:] == ["runtime"] else render_example(), end="")
