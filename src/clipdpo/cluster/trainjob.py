"""Build a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) for `python -m clipdpo.train`,
and the project's own ClusterTrainingRuntime that the helm chart can install.

The TrainJob names a runtime (`torch-distributed` by default: a JobSet with one replicated job
`node`, container `node`) and says only what differs: image, command, args, env, node count,
processes per node, resources. The runtime's torch plugin injects PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT into the `node` container; torchrun reads
each PET_<FLAG> as the default of its --<flag>, so the command is a bare `torchrun -m
clipdpo.train` and the entry point sees the usual RANK/WORLD_SIZE/LOCAL_RANK from torchrun.
DeepSpeed runs inside those torchrun processes (not the MPI `deepspeed-distributed` runtime).

What a TrainJob cannot say (its container patch allows only env, volumeMounts, securityContext):
envFrom, so the S3 keys come one `secretKeyRef` each; restarts and TTL, which belong to the
runtime's JobSet (failurePolicy.maxRestarts, ttlSecondsAfterFinished): `build_runtime` writes
them for a team that wants restarts (the stock torch-distributed runtime has none: any failed
pod fails the job). Pod placement, identity and volumes go in through `runtimePatches`.
"""

from __future__ import annotations

import copy

from clipdpo.cluster.jobspec import (
    CONTAINER_SECURITY,
    POD_SECURITY,
    VOLUME_MOUNTS,
    TrainJobSpec,
    example_manifest,
    job_metadata,
    plain_env,
    pod_labels,
    pod_spec_extras,
    resources,
    secret_env,
)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
NODE_JOB = "node"  # the replicated job and container the torch runtime defines and injects PET_* into
CONTAINER_NAME = "node"
PATCH_MANAGER = "clipdpo.dev/launcher"
STOCK_RUNTIME = "torch-distributed"  # the Trainer's own torchrun runtime: no failurePolicy, a failed pod ends the job
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
            "queue_name, or run on a runtime with podGroupPolicy (helm trainingRuntime.gang), "
            "not gang=True"
        )
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
            "runtimeRef": {"name": spec.runtime, "apiGroup": GROUP, "kind": RUNTIME_KIND},
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "trainer": trainer,
            "runtimePatches": [_pod_patch(spec)],
        },
    }


def build_runtime(
    name: str,
    image: str,
    *,
    max_restarts: int = 3,
    ttl_seconds_after_finished: int = 3600,
    gang_timeout_seconds: int = 0,
) -> dict:
    """A ClusterTrainingRuntime like torch-distributed plus restarts, TTL and, optionally, coscheduling.

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
                "replicatedJobs": [
                    {
                        "name": NODE_JOB,
                        "template": {
                            "metadata": {"labels": dict(ANCESTOR_LABEL)},
                            "spec": {
                                "template": {
                                    "spec": {
                                        "securityContext": copy.deepcopy(POD_SECURITY),
                                        "containers": [
                                            {
                                                "name": CONTAINER_NAME,
                                                "image": image,
                                                "securityContext": copy.deepcopy(CONTAINER_SECURITY),
                                            }
                                        ],
                                    }
                                }
                            },
                        },
                    }
                ],
            }
        },
    }
    if gang_timeout_seconds > 0:
        spec["podGroupPolicy"] = {"coscheduling": {"scheduleTimeoutSeconds": gang_timeout_seconds}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": RUNTIME_KIND,
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


if __name__ == "__main__":
    print(render_example(), end="")
