"""What a training launch asks the cluster for, whichever operator runs it (PyTorchJob or TrainJob).

The two builders (`pytorchjob.py`, `trainjob.py`) turn one `TrainJobSpec` into their kind's
object; the pod-level pieces both need (volumes, security context, environment) live here once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

LABEL_APP = "app.kubernetes.io/name"
LABEL_KEY = "clipdpo.dev/launch-key"
RUN_LABEL = "clipdpo.dev/run"  # the pipeline run that launched the job: what the run leaves running is found by it
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue admits the whole job at once (gang admission)
# RFC 1035 label: the TrainJob CRD's own rule (a letter first), stricter than PyTorchJob's RFC 1123.
NAME_PATTERN = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
# The S3 Secret's keys (helm/clipdpo writes them): the first two are required, the rest optional.
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
# A TrainJob's runtime, as `kind/name` (kubectl's form) or a bare name, which the TrainJob CRD reads as a
# ClusterTrainingRuntime (runtimeRef.kind's default). The default is the project's namespaced runtime, which
# helm and k8s/ install where the runs execute: the JobSet is recreated after a pod fails (failurePolicy), as a
# PyTorchJob's pods restart (backoff_limit); the Trainer's stock torch-distributed fails the job instead.
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
PROJECT_RUNTIME_NAME = "clipdpo-torch"
DEFAULT_RUNTIME = f"TrainingRuntime/{PROJECT_RUNTIME_NAME}"
# Failures of a pod the job survives, whichever kind runs it (PyTorchJob: restart_budget; TrainJob: the project
# runtime's failurePolicy.maxRestarts, helm trainingRuntime.maxRestarts).
DEFAULT_RESTARTS = 3


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
    # Failures of a pod the job survives. PyTorchJob: pytorchjob.restart_budget makes them its backoffLimit;
    # TrainJob: its runtime's failurePolicy.maxRestarts decides (the project runtime's default is the same number).
    # The follower counts a crash loop as fatal only past them (follow.crash_threshold).
    backoff_limit: int = DEFAULT_RESTARTS
    # PyTorchJob: a finished job (a failed one: the follower deletes succeeded jobs) stays this long for inspection
    ttl_seconds_after_finished: int = 3 * 24 * 3600
    # No ownerReference to the launching step's pod: the job must outlive an evicted launcher (the retried step
    # re-attaches by its name); what the run leaves running is deleted by RUN_LABEL (launch.delete_run_jobs).
    labels: dict[str, str] = field(default_factory=dict)
    queue_name: str = ""  # Kueue LocalQueue; empty: no Kueue
    gang: bool = False  # PyTorchJob: runPolicy.schedulingPolicy.minAvailable = every replica
    runtime: str = DEFAULT_RUNTIME  # TrainJob: the runtime it runs on (runtime_ref)

    def __post_init__(self) -> None:
        if not re.fullmatch(NAME_PATTERN, self.name):
            raise ValueError(
                f"job name {self.name!r} is not a valid Kubernetes name "
                "(lower case letter first, then letters, digits, '-', <= 63)"
            )
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if ":" not in self.image.rsplit("/", 1)[-1] and "@" not in self.image:
            raise ValueError(f"image {self.image!r} has no tag: pin a version")
        if self.image.endswith(":latest"):
            raise ValueError(f"image {self.image!r}: pin a version, not latest")
        if self.active_deadline_seconds < 1 or self.backoff_limit < 0:
            raise ValueError(
                f"active_deadline_seconds must be >= 1 and backoff_limit >= 0, got "
                f"{self.active_deadline_seconds} and {self.backoff_limit}"
            )
        runtime_ref(self.runtime)  # a bad runtime fails here, at submit, not in the Trainer's webhook
        if self.queue_name and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", self.queue_name):
            raise ValueError(f"queue_name {self.queue_name!r} is not a valid LocalQueue name")

    @property
    def procs_per_node(self) -> int:
        return max(self.gpus_per_node, 1)


def runtime_ref(runtime: str) -> tuple[str, str]:
    """(kind, name) of a TrainJob's runtime given as `kind/name` or a bare ClusterTrainingRuntime name."""
    kind, _, name = runtime.rpartition("/")
    kind = kind or "ClusterTrainingRuntime"
    if kind not in RUNTIME_KINDS or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
        raise ValueError(
            f"runtime {runtime!r}: expected <name> (a ClusterTrainingRuntime) or <kind>/<name> with kind one of "
            f"{', '.join(RUNTIME_KINDS)}, e.g. {DEFAULT_RUNTIME}"
        )
    return kind, name


def job_name(launch_key: str, prefix: str = "clipdpo-train") -> str:
    """A stable name per launch key (pipeline run + output): a restarted step finds its own job."""
    return f"{prefix}-{hashlib.sha256(launch_key.encode()).hexdigest()[:12]}"


def run_label(run: str) -> str:
    """RUN_LABEL's value for pipeline run `run`: the run's name when it is a valid label value, else its hash."""
    if re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", run):
        return run
    return "h-" + hashlib.sha256(run.encode()).hexdigest()[:40]


def launch_label(launch_key: str) -> str:
    """The value of LABEL_KEY on a job: tells our own job (re-attach) from a name clash."""
    return hashlib.sha256(launch_key.encode()).hexdigest()[:40]


def job_metadata(spec: TrainJobSpec) -> dict:
    labels = {LABEL_APP: "clipdpo", "app.kubernetes.io/component": "train", **spec.labels}
    if spec.queue_name:
        labels[QUEUE_LABEL] = spec.queue_name
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels}


def resources(spec: TrainJobSpec) -> dict:
    out: dict[str, dict[str, str | int]] = {
        "requests": {"cpu": spec.cpu, "memory": spec.memory},
        "limits": {"memory": spec.memory},
    }
    if spec.gpus_per_node:
        out["requests"]["nvidia.com/gpu"] = spec.gpus_per_node
        out["limits"]["nvidia.com/gpu"] = spec.gpus_per_node
    return out


# Every training container's environment unless the launch's `env` says otherwise.
TRAIN_ENV_DEFAULTS = {
    # A collective that fails or passes its timeout (train config collective_timeout_minutes) ends the process,
    # so the pod fails and its restart policy brings the job back from its last checkpoint, instead of the
    # other ranks waiting on a dead peer. 3 tears the process down without aborting the NCCL communicators
    # first: the abort of mode 1 can itself hang on a lost peer, which is why PyTorch made 3 its default.
    # Pinned so that an image or a cluster-wide env setting 0 cannot turn it off. TORCH_NCCL_BLOCKING_WAIT
    # stays unset: the watchdog, not a blocking wait in every collective, enforces the timeout.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
}


def plain_env(spec: TrainJobSpec) -> list[dict]:
    env = [{"name": "CLIPDPO_SCRATCH", "value": "/scratch"}, {"name": "HF_HOME", "value": "/scratch/hf"}]
    values = {**TRAIN_ENV_DEFAULTS, **spec.env}
    return env + [{"name": key, "value": value} for key, value in sorted(values.items())]


def secret_env(spec: TrainJobSpec) -> list[dict]:
    """S3 credentials one key at a time, for objects that cannot say envFrom (a TrainJob's trainer)."""

    def ref(key: str, optional: bool) -> dict:
        selector: dict[str, str | bool] = {"name": spec.s3_secret, "key": key}
        if optional:
            selector["optional"] = True
        return {"name": key, "valueFrom": {"secretKeyRef": selector}}

    return [ref(key, False) for key in S3_REQUIRED_KEYS] + [ref(key, True) for key in S3_OPTIONAL_KEYS]


VOLUME_MOUNTS = ({"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": "/scratch"})
# Pod Security "restricted" (what a profile namespace labelled pod-security.kubernetes.io/enforce=restricted
# admits): non-root, no privilege escalation, every capability dropped, the runtime's default seccomp profile.
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_spec_extras(spec: TrainJobSpec) -> dict:
    """Pod-level fields both kinds set: identity, placement, /dev/shm and scratch volumes."""
    pod = {
        "serviceAccountName": spec.service_account,
        "volumes": [
            # the default 64 MiB /dev/shm breaks NCCL and data loading
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "securityContext": dict(POD_SECURITY),
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return pod


def pod_labels(spec: TrainJobSpec, role: str) -> dict:
    return {LABEL_APP: "clipdpo", "app.kubernetes.io/component": f"train-{role.lower()}", **spec.labels}


def example_manifest(job: dict, what: str, path: str, module: str) -> str:
    """A manifest shipped under k8s/ for manual runs: how to apply it and where it is generated, then the object."""
    import yaml

    header = (
        f"# {what} for a manual training run (the pipeline builds the same object itself):\n"
        f"#   kubectl create -f {path}\n"
        f"# Generated by `python -m {module}`; edit the spec there, not here.\n"
    )
    return header + yaml.safe_dump(job, sort_keys=False)
