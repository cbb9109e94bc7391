"""The compiled pipeline's cluster values in one place: each step's pod (CPU and memory requests and limits,
retries, timeout), the fan-outs' parallelism, the Kueue queue of the GPU step pods, image pull secrets and the
run's TTL.

`CLIPDPO_CLUSTER_VALUES` names a YAML or JSON file, or holds the JSON object itself (helm's ConfigMap does);
it gives only what differs from the defaults below: `{"steps": {"train": {"retries": 5}}}` changes one value
of one step and keeps the rest. Every key is checked when the values load, before anything compiles: a typo in
a step's name or a limit below its request fails on the user's machine, not as a pod the cluster rejects.
docs/cluster.md lists the keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from clipdpo.config import AT_LEAST_1, NON_NEGATIVE, ConfigError, Range, check_ranges, from_dict

VALUES_ENV = "CLIPDPO_CLUSTER_VALUES"
# The pipeline's ParallelFor loops (their names in pipelines/clipdpo_pipeline.py)
FAN_OUTS = ("generate-shards", "score-shards", "evaluate-tasks")
# The steps whose pods hold a GPU: they get the GPU node selector, tolerations and the Kueue queue label
GPU_STEPS = (
    "generate-shard",
    "score-shard",
    "povid-pairs",
    "evaluate-task",
    "round-generate-shard",
    "round-score-shard",
    "round-evaluate-task",
)

# Per step (the component's name, as the compiled spec names its task): (CPU request, memory request, CPU limit,
# memory limit, retries, timeout in minutes; 0: none). Memory limit = request: memory cannot be throttled, so a
# step over its request is stopped by its own limit rather than evicting a neighbour. CPU limit = twice the
# request: room to burst, still bounded for namespaces whose quota counts limits. Retries are for a lost pod
# (eviction, preemption, node failure; the stages resume from their done-records): 2 on GPU steps, which run on
# preemptible nodes most often; 3 for train, whose launcher re-attaches to its job. The gate takes none: it may
# have moved the promoted pointer before its pod was lost, and a second judgement would compare the model with
# itself. train has no timeout: the job's own deadline (train_timeout_hours) governs.
_DEFAULT_PODS: dict[str, tuple[str, str, str, str, int, int]] = {
    "plan-shards": ("500m", "512M", "1", "512M", 1, 15),
    "ingest": ("2", "8G", "4", "8G", 1, 720),
    "generate-shard": ("8", "64G", "16", "64G", 2, 1440),
    "generate-finalize": ("1", "2G", "2", "2G", 1, 120),
    "score-shard": ("8", "32G", "16", "32G", 2, 1440),
    "score-finalize": ("1", "2G", "2", "2G", 1, 120),
    "filter-pairs": ("4", "8G", "8", "8G", 1, 360),
    "train-method": ("1", "1G", "2", "1G", 1, 15),
    "povid-placement": ("1", "1G", "2", "1G", 1, 15),
    "povid-pairs": ("8", "32G", "16", "32G", 2, 1440),
    "povid-pairs-cpu": ("2", "8G", "4", "8G", 1, 720),
    "training-pairs": ("1", "2G", "2", "2G", 1, 120),
    "train": ("1", "2G", "2", "2G", 3, 0),
    "plan-evaluation": ("1", "2G", "2", "2G", 1, 30),
    "evaluate-task": ("8", "64G", "16", "64G", 2, 1440),
    "evaluate-merge": ("2", "8G", "4", "8G", 1, 120),
    "gate": ("1", "2G", "2", "2G", 0, 30),
    "report": ("2", "4G", "4", "4G", 1, 60),
    "cleanup-train-jobs": ("500m", "512M", "1", "512M", 2, 15),
    # iterative rounds (pipelines/round_components.py): each as its one-round twin
    "round-start": ("1", "1G", "2", "1G", 1, 15),
    "round-generate-shard": ("8", "64G", "16", "64G", 2, 1440),
    "round-generate-finalize": ("1", "2G", "2", "2G", 1, 120),
    "round-score-shard": ("8", "32G", "16", "32G", 2, 1440),
    "round-plan-evaluation": ("1", "2G", "2", "2G", 1, 30),
    "round-evaluate-task": ("8", "64G", "16", "64G", 2, 1440),
    "round-evaluate-merge": ("2", "8G", "4", "8G", 1, 120),
    "round-check": ("1", "2G", "2", "2G", 1, 30),
    "rounds-evaluation": ("2", "8G", "4", "8G", 1, 120),
}

_CPU = re.compile(r"^(\d+(\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(\.\d+)?)(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$")
_MEMORY_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_MEMORY_UNITS.update({f"{unit}i": 1024 ** (power + 1) for power, unit in enumerate("KMGTPE")})


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: "500m" -> 0.5, "2" -> 2.0. ValueError if it is not one."""
    match = _CPU.match(quantity)
    if not match:
        raise ValueError(f"{quantity!r} is not a CPU quantity (e.g. '500m', '2')")
    return float(match.group(1)) / (1000 if match.group(3) else 1)


def memory_bytes(quantity: str) -> float:
    """A Kubernetes memory quantity in bytes: "512M" -> 5.12e8, "1Gi" -> 2**30. ValueError if it is not one."""
    match = _MEMORY.match(quantity)
    if not match:
        raise ValueError(f"{quantity!r} is not a memory quantity (e.g. '512M', '8G', '64Gi')")
    return float(match.group(1)) * _MEMORY_UNITS[match.group(3) or ""]


@dataclass(frozen=True)
class StepValues:
    """One step's pod. A limit "" sets none; retries and timeout 0: none."""

    cpu_request: str = "1"
    memory_request: str = "2G"
    cpu_limit: str = ""
    memory_limit: str = ""
    retries: int = 0
    timeout_minutes: int = 0  # the pod's activeDeadlineSeconds: a hung pod stops holding its node (and GPU)

    RANGES = {"retries": Range(low=0, high=10), "timeout_minutes": NON_NEGATIVE}

    def __post_init__(self):
        check_ranges(self)
        for request, limit, amount in (
            ("cpu_request", "cpu_limit", cpu_cores),
            ("memory_request", "memory_limit", memory_bytes),
        ):
            wanted = amount(getattr(self, request))  # ValueError: from_dict names the key
            cap = getattr(self, limit)
            if cap and amount(cap) < wanted:
                raise ValueError(f"{limit} {cap!r} is below {request} {getattr(self, request)!r}")


def default_steps() -> dict[str, StepValues]:
    return {name: StepValues(*row) for name, row in _DEFAULT_PODS.items()}


@dataclass(frozen=True)
class ClusterValues:
    """How the compiled pipeline's pods are shaped and kept (see the module docstring)."""

    steps: dict[str, StepValues] = field(default_factory=default_steps)
    # a retry waits retry_backoff_seconds, times retry_backoff_factor per earlier try, at most the max
    retry_backoff_seconds: int = 60
    retry_backoff_factor: float = 2.0
    retry_backoff_max_seconds: int = 3600
    # per fan-out (FAN_OUTS), how many of its pods run at once; 0: all (the cluster's GPUs are the limit)
    parallelism: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAN_OUTS, 0))
    # a Kueue LocalQueue for the GPU step pods (label kueue.x-k8s.io/queue-name; Kueue's pod integration must be
    # on for the namespace); "": none. The training job's queue is the run's train_queue_name parameter.
    gpu_queue_name: str = ""
    # Secrets (kubernetes.io/dockerconfigjson, in the runs' namespace) every step pulls its image with
    image_pull_secrets: list[str] = field(default_factory=list)
    # how long Argo keeps a finished run's workflow and pods (their logs); 0: the KFP install's own default.
    # Needs a KFP backend that knows these platform fields: an older one cannot read the platform spec at all
    # and drops every Kubernetes setting of the run with it, so they stay off unless set.
    ttl_seconds_after_success: int = 0
    ttl_seconds_after_failure: int = 0

    RANGES = {
        "retry_backoff_seconds": NON_NEGATIVE,
        "retry_backoff_factor": AT_LEAST_1,
        "retry_backoff_max_seconds": NON_NEGATIVE,
        "ttl_seconds_after_success": Range(low=0, high=2**31 - 1),
        "ttl_seconds_after_failure": Range(low=0, high=2**31 - 1),
    }

    def __post_init__(self):
        check_ranges(self)
        _check_names("steps", self.steps, tuple(_DEFAULT_PODS))
        _check_names("parallelism", self.parallelism, FAN_OUTS)
        if any(count < 0 for count in self.parallelism.values()):
            raise ValueError(f"parallelism: a count is below 0 in {self.parallelism}; 0 runs every item at once")

    def step(self, name: str) -> StepValues:
        return self.steps[name]

    def for_local(self) -> ClusterValues:
        """These values for kfp's local runner, which honours retries (kfp 2.17): none, as a local failure is a
        bug to see at once, not a lost pod to wait for."""
        return dataclasses.replace(
            self, steps={name: dataclasses.replace(step, retries=0) for name, step in self.steps.items()}
        )


def _check_names(key: str, given: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{key}: unknown name(s) {unknown}; valid names are {list(known)}")


def _merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` laid over it, object by object (a step given in part keeps its other defaults)."""
    out = dict(base)
    for key, value in change.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def parse_values(text: str, where: str) -> ClusterValues:
    """ClusterValues from YAML or JSON `text` holding what differs from the defaults (empty: the defaults)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML or JSON ({err})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of cluster values, got {type(data).__name__}")
    return from_dict(ClusterValues, _merged(dataclasses.asdict(ClusterValues()), data), where)


def load_values(source: str) -> ClusterValues:
    """`source`: a YAML/JSON file's path, or a JSON object itself (it starts with "{"); "": the defaults."""
    if source.lstrip().startswith("{"):
        return parse_values(source, VALUES_ENV)
    if not source.strip():
        return ClusterValues()
    try:
        with open(source) as handle:
            return parse_values(handle.read(), source)
    except OSError as err:
        raise ConfigError(f"{VALUES_ENV}={source}: cannot be read ({err.strerror})") from None


def values_from_env(environ=os.environ) -> ClusterValues:
    return load_values(environ.get(VALUES_ENV, ""))
