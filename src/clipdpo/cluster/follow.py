"""Create a training job (PyTorchJob or TrainJob) or re-attach to it, follow it to its end.

Restart-safe: the job name is derived from the launch key (the pipeline run + the step's output and
config), so a retried step whose launcher pod was lost finds the job it already created and follows
it instead of starting a second one. The job has no owner: it outlives its launcher pod.

The clocks start at admission, not at submission: a job that Kueue keeps suspended in its queue is
only waiting (`admission_timeout_seconds`, 0 = none, ends the step but leaves the job queued).
The step ends when the job ends, whichever way:
  succeeded          -> JobOutcome; the job is deleted (cleanup=True): its log was streamed
  failed             -> JobFailed: the operator's reason (BackoffLimitExceeded, DeadlineExceeded, ...) and
                        the log tail of the pod that failed; the job is kept for inspection (its TTL clears it)
  deleted under us   -> JobDeleted
  cannot start       -> JobStartFailed at once on ErrImagePull / ImagePullBackOff / CreateContainerConfigError
                        / ... (persisting `stuck_grace_seconds`) or CrashLoopBackOff once a container has
                        restarted as often as the job allows (crash_threshold: never before 3 restarts), or
                        when the containers have not started `startup_timeout_seconds` after
                        every pod was placed; the job is deleted (it holds GPUs it cannot use)
  never scheduled    -> JobUnschedulable `schedule_timeout_seconds` after admission, naming why the pods
                        wait (the scheduler's PodScheduled message); the job is deleted
  still running      -> JobTimeout after `timeout_seconds` from admission (a backstop behind the job's own
                        deadline); the job is deleted
  step stopped       -> StepCancelled (SIGTERM, see launch.py): a cancelled run deletes the job; a launcher pod
                        that is being evicted (DisruptionTarget) leaves it running for the retry to re-attach
While the job runs, rank 0's log is printed to the step's log as it grows.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from clipdpo.cluster import pytorchjob, trainjob
from clipdpo.cluster.jobspec import LABEL_KEY, RUN_LABEL
from clipdpo.cluster.trainerversion import version_text
from clipdpo.errors import UserError

log = logging.getLogger("clipdpo.cluster")
KUEUE_GROUP, KUEUE_VERSIONS, KUEUE_PLURAL = "kueue.x-k8s.io", ("v1beta2", "v1beta1"), "workloads"  # newest first
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
# Container waiting reasons that do not clear by waiting: a wrong image or tag, a missing Secret or ConfigMap key.
# Kubelet retries the pull, so a registry hiccup shows ErrImagePull too: they must persist `stuck_grace_seconds`.
NEVER_STARTS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)
CRASH_LOOP = "CrashLoopBackOff"  # a crash the restart policy may cure: fatal only past crash_threshold restarts
MIN_CRASH_RESTARTS = 3  # a crash loop's restarts before it is fatal, however few the job allows
DISRUPTION_CONDITION = "DisruptionTarget"  # set on a pod before an eviction, preemption or node shutdown stops it


@dataclass(frozen=True)
class JobKind:
    kind: str
    group: str
    version: str
    plural: str
    container: str  # the training container in each pod
    success: str  # the condition type that means done
    pod_job_label: str  # label whose value is the job name on every pod of the job
    pod_count: Callable[[dict], int]
    suspended: Callable[[dict], bool]  # the spec's suspend flag (Kueue sets it until it admits the job)
    needs: str  # the operator whose CRD declares every field the builder writes (said when a field is refused)
    restarts_allowed: Callable[[dict], int]  # restarts of one container the job itself survives


KINDS = {
    pytorchjob.KIND: JobKind(
        pytorchjob.KIND,
        pytorchjob.GROUP,
        pytorchjob.VERSION,
        pytorchjob.PLURAL,
        pytorchjob.CONTAINER_NAME,
        "Succeeded",
        "training.kubeflow.org/job-name",
        lambda job: sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values()),
        lambda job: bool((job["spec"].get("runPolicy") or {}).get("suspend")),
        "a Training Operator whose PyTorchJob CRD has them (the builder is checked against release 1.9's)",
        pytorchjob.failures_survived,
    ),
    trainjob.KIND: JobKind(
        trainjob.KIND,
        trainjob.GROUP,
        trainjob.VERSION,
        trainjob.PLURAL,
        trainjob.CONTAINER_NAME,
        "Complete",
        "jobset.sigs.k8s.io/jobset-name",
        lambda job: job["spec"]["trainer"]["numNodes"],
        lambda job: bool(job["spec"].get("suspend")),
        f"Kubeflow Trainer {version_text(trainjob.MIN_TRAINER_VERSION)} or newer",
        # its restarts are the runtime's: the project runtime recreates every pod (no container restarts in
        # place); the stock one restarts in place within its Job's backoffLimit, which the manifest does not say
        lambda job: 0,
    ),
}


def kind_of(manifest: dict) -> JobKind:
    kind = KINDS.get(str(manifest.get("kind")))
    if kind is None or manifest.get("apiVersion") != f"{kind.group}/{kind.version}":
        raise ValueError(
            f"cannot follow {manifest.get('apiVersion')} {manifest.get('kind')}: expected one of "
            + ", ".join(f"{k.group}/{k.version} {k.kind}" for k in KINDS.values())
        )
    return kind


class JobFailed(RuntimeError):
    def __init__(self, name: str, reason: str, message: str, logs: str, pod: str = ""):
        where = f"pod {pod}" if pod else "no pod"
        super().__init__(f"{name} failed: {reason}: {message}\n--- {where} log (tail) ---\n{logs}")
        self.reason, self.message, self.logs, self.pod = reason, message, logs, pod


class JobDeleted(JobFailed):
    pass


class JobStartFailed(JobFailed):
    """A pod of the job cannot start (image, Secret, crash loop) or did not start by the start-up deadline."""


class JobTimeout(RuntimeError):
    pass


class JobUnschedulable(JobTimeout):
    def __init__(self, message: str, pending_reason: str):
        super().__init__(message)
        self.pending_reason = pending_reason


class JobQueued(JobUnschedulable):
    """Still waiting for admission after `admission_timeout_seconds`: the job stays in its queue."""


class JobConflict(RuntimeError):
    pass


class FieldsNotServed(UserError):
    """The cluster's CRD for the job's kind lacks fields the job sets: its operator is too old."""


def unknown_fields(err: Exception) -> list[str]:
    """The fields a strict create was refused for (the API server's 400 Status: `strict decoding error: unknown
    field "spec.runtimePatches", ...`); [] for any other error."""
    if getattr(err, "status", None) != 400:
        return []
    body = getattr(err, "body", None) or ""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, TypeError, AttributeError):  # not a Status object: read it as text
        message = str(body)
    return re.findall(r'unknown field "([^"]+)"', message)


class StepCancelled(BaseException):  # like KeyboardInterrupt: no `except Exception` may swallow it
    pass


@dataclass
class JobOutcome:
    name: str
    state: str  # Succeeded
    reattached: bool
    seconds: float
    logs: str


def _is_not_found(err: Exception) -> bool:
    return getattr(err, "status", None) == 404


def as_dict(obj) -> dict:
    """A client model (V1Pod, ...) as the API's JSON dict; dicts pass through."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def job_state(job: dict, success: str = "Succeeded") -> tuple[str, str, str]:
    """(state, reason, message) from the job's conditions; `success` (Succeeded | Complete) reads as Succeeded."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for wanted in ("Failed", success):
        for condition in conditions:
            if condition.get("type") == wanted and condition.get("status") == "True":
                state = "Succeeded" if wanted == success else wanted
                return state, condition.get("reason", ""), condition.get("message", "")
    for condition in reversed(conditions):
        if condition.get("status") == "True":
            return condition.get("type", "Unknown"), condition.get("reason", ""), condition.get("message", "")
    return "Pending", "", ""


def is_queued(kind: JobKind, job: dict) -> bool:
    """Held back before admission: suspended (by Kueue, until it admits the job), with no clock running."""
    return kind.suspended(job) or _condition(job, "Suspended").get("status") == "True"


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def unscheduled_reason(pods: list[dict]) -> str:
    """The scheduler's word on the first pod it could not place ('' when none is refused)."""
    for pod in pods:
        scheduled = _condition(pod, "PodScheduled")
        if scheduled.get("status") == "False":
            return (
                f"pod {pod['metadata']['name']}: {scheduled.get('reason', 'Pending')}: {scheduled.get('message', '')}"
            ).rstrip(": ")
    return ""


def _container_statuses(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])


@dataclass(frozen=True)
class Blocked:
    """A container that cannot start: its waiting reason and the kubelet's message."""

    pod: str
    container: str
    reason: str
    message: str
    restarts: int


def crash_threshold(restarts_allowed: int, floor: int = MIN_CRASH_RESTARTS) -> int:
    """Restarts of one container after which its CrashLoopBackOff fails the step: as many as the job survives
    (a container whose every recovery crashes has then used them all, and the next crash ends the job anyway),
    never fewer than `floor`. Below it a crash is a failure the job's restarts are there for: a job allowed 5
    restarts is not failed at its 3rd."""
    return max(floor, restarts_allowed)


def blocked_containers(pods: list[dict], crash_restarts: int) -> list[Blocked]:
    """Containers waiting for a reason that waiting will not cure (NEVER_STARTS), or crash-looping after
    `crash_restarts` restarts (crash_threshold); init containers included (a pod whose init container cannot pull
    never starts)."""
    found = []
    for pod in pods:
        for status in _container_statuses(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            reason, restarts = waiting.get("reason", ""), int(status.get("restartCount") or 0)
            if reason in NEVER_STARTS or (reason == CRASH_LOOP and restarts >= crash_restarts):
                found.append(
                    Blocked(
                        pod["metadata"]["name"], status.get("name", ""), reason, waiting.get("message", ""), restarts
                    )
                )
    return found


def runs_container(pod: dict, container: str) -> bool:
    return any(c.get("name") == container for c in (pod.get("spec") or {}).get("containers") or [])


def container_started(pod: dict, container: str) -> bool:
    """The training container has run (running now, exited, or restarted at least once)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            state = status.get("state") or {}
            return bool(state.get("running") or state.get("terminated") or status.get("restartCount"))
    return False


def not_started_reason(pods: list[dict], container: str) -> str:
    """Why the training containers have not started: each waiting container's reason and message."""
    waits = []
    for pod in pods:
        if container_started(pod, container):
            continue
        for status in _container_statuses(pod):
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting:
                waits.append(
                    f"pod {pod['metadata']['name']} container {status.get('name')}: "
                    f"{waiting.get('reason', 'Waiting')}: {waiting.get('message', '')}".rstrip(": ")
                )
                break
        else:
            waits.append(f"pod {pod['metadata']['name']}: {(pod.get('status') or {}).get('phase', 'Pending')}")
    return "; ".join(waits) or "no pods"


def failed_container(pod: dict, container: str) -> tuple[bool, bool]:
    """(failed, previous): the container exited non-zero now, or before its last restart (previous)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != container:
            continue
        now = (status.get("state") or {}).get("terminated") or {}
        before = (status.get("lastState") or {}).get("terminated") or {}
        if now.get("exitCode", 0) != 0:
            return True, False
        if before.get("exitCode", 0) != 0:
            return True, True
    return False, False


def rank0_pod(pods: list[dict]) -> dict | None:
    """The pod of node rank 0: the PyTorchJob's Master, the TrainJob's completion index 0 (else first by name)."""

    def order(pod: dict):
        labels = pod["metadata"].get("labels") or {}
        role = labels.get("training.kubeflow.org/replica-type", "").lower()
        index = (
            labels.get("training.kubeflow.org/replica-index")
            or labels.get("batch.kubernetes.io/job-completion-index")
            or "0"
        )
        return role not in ("", "master"), int(index) if index.isdigit() else 0, pod["metadata"]["name"]

    return min(pods, key=order) if pods else None


def log_pod(pods: list[dict], container: str) -> tuple[str, bool]:
    """(pod name, previous) whose log explains the end: a failed pod first, else rank 0."""
    for pod in sorted(pods, key=lambda pod: pod["metadata"]["name"]):
        failed, previous = failed_container(pod, container)
        if failed:
            return pod["metadata"]["name"], previous
    rank0 = rank0_pod(pods)
    return (rank0["metadata"]["name"], False) if rank0 else ("", False)


def _timestamp_key(stamp: str) -> tuple[str, str]:
    """An RFC 3339 timestamp as a sortable key: kubelet drops the fraction's trailing zeros (RFC3339Nano)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return whole, fraction.ljust(9, "0")


@dataclass
class LogStream:
    """What of one pod's log has been printed: the last timestamp and how many lines carried it."""

    pod: str = ""
    last: tuple[str, str] | None = None
    at_last: int = 0
    read_at: float | None = None

    def new_lines(self, text: str) -> list[str]:
        """The lines of a timestamped log read not printed yet (reads overlap: each asks a little further back)."""
        fresh, seen_at_last = [], 0
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            key = _timestamp_key(stamp)
            if self.last is not None and key < self.last:
                continue
            if self.last is not None and key == self.last:
                seen_at_last += 1
                if seen_at_last <= self.at_last:
                    continue
            if key == self.last:
                self.at_last += 1
            else:
                self.last, self.at_last, seen_at_last = key, 1, 1
            fresh.append(message)
        return fresh


def print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class _Progress:
    """Where a followed job stands, by the follower's clock."""

    queued_since: float | None = None
    admitted_at: float | None = None
    scheduled_at: float | None = None
    started: bool = False
    blocked_since: dict = field(default_factory=dict)  # (pod, container) -> first seen blocked

    def requeued(self) -> None:  # Kueue preempted the job: its pods are gone, every clock starts again
        self.admitted_at = self.scheduled_at = None
        self.started = False
        self.blocked_since.clear()


@dataclass(frozen=True)
class FollowSettings:
    """How the follower polls and reports; the defaults suit a real cluster (tests poll a fake clock)."""

    poll_seconds: float = 15.0
    log_tail_lines: int = 200  # of the failed pod's log, kept in the step's error
    stuck_grace_seconds: float = 120.0  # a container blocked this long (not a crash loop) fails the step
    crash_restarts: int = MIN_CRASH_RESTARTS  # the floor of crash_threshold
    stream_logs: bool = True  # rank 0's new log lines into the step's log at each poll


@dataclass(frozen=True)
class JobLimits:
    """How long a followed job may take, each in seconds counted from its admission (0: no limit). Waiting for
    admission has only its own limit: a job that is only queued keeps its place (see JobQueued)."""

    timeout_seconds: float
    schedule_timeout_seconds: float = 0
    admission_timeout_seconds: float = 0
    startup_timeout_seconds: float = 0


class JobFollower:
    """Talks to the cluster only through two client objects: CustomObjectsApi and CoreV1Api.

    `launcher_pod`: (namespace, name) of the pod this runs in, to tell an eviction from a cancelled run."""

    def __init__(
        self,
        custom_api,
        core_api,
        *,
        settings: FollowSettings = FollowSettings(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log_sink: Callable[[str], None] = print_line,
        launcher_pod: tuple[str, str] | None = None,
    ):
        self.custom = custom_api
        self.core = core_api
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.log_sink = log_sink
        self.launcher_pod = launcher_pod
        self.stream = LogStream()

    def _get(self, kind: JobKind, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        except Exception as err:  # kubernetes.client.ApiException
            if _is_not_found(err):
                return None
            raise

    def submit(self, manifest: dict) -> tuple[dict, bool]:
        """Create the job, or return the existing one with the same launch key (re-attach)."""
        kind = kind_of(manifest)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        key = manifest["metadata"].get("labels", {}).get(LABEL_KEY)
        existing = self._get(kind, namespace, name)
        if existing is not None:
            if existing.get("metadata", {}).get("labels", {}).get(LABEL_KEY) != key:
                raise JobConflict(
                    f"{kind.kind} {namespace}/{name} exists but belongs to another launch "
                    f"(label {LABEL_KEY} differs); delete it or use another run"
                )
            log.info("re-attaching to %s %s/%s created by an earlier attempt of this step", kind.kind, namespace, name)
            return existing, True
        try:  # strict: a field the served CRD lacks is refused, not silently dropped (an older operator)
            created = self.custom.create_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, manifest, field_validation="Strict"
            )
        except Exception as err:
            twin = self._get(kind, namespace, name) if getattr(err, "status", None) == 409 else None
            if twin is not None:  # created concurrently by a twin attempt: follow it
                return twin, True
            fields = unknown_fields(err)
            if fields:
                raise FieldsNotServed(
                    f"the cluster's {kind.kind} CRD ({kind.group}/{kind.version}) has no {', '.join(fields)}, "
                    f"which this job sets: the job needs {kind.needs}; nothing was created"
                ) from None
            raise
        log.info("created %s %s/%s", kind.kind, namespace, name)
        return created, False

    def pods(self, kind: JobKind, namespace: str, name: str) -> list[dict]:
        found = self.core.list_namespaced_pod(namespace, label_selector=f"{kind.pod_job_label}={name}")
        return [as_dict(pod) for pod in as_dict(found).get("items") or []]

    def _log(self, pod: str, namespace: str, container: str, **extra) -> str:
        return self.core.read_namespaced_pod_log(pod, namespace, container=container, **extra)

    def pod_logs(self, kind: JobKind, namespace: str, name: str) -> tuple[str, str]:
        """(pod, its log tail): the failed pod's if one failed, else rank 0's. Best effort."""
        try:
            pod, previous = log_pod(self.pods(kind, namespace, name), kind.container)
            if not pod:
                return "", "(no pod found)"
            extra = {"previous": True} if previous else {}
            return pod, self._log(pod, namespace, kind.container, tail_lines=self.settings.log_tail_lines, **extra)
        except Exception as err:  # logs are best effort: the failure reason is what matters
            return "", f"(logs unavailable: {err})"

    def stream_rank0(self, kind: JobKind, namespace: str, pods: list[dict]) -> None:
        """Print what rank 0 logged since the last poll (the first read: the last `log_tail_lines`). Best effort."""
        pod = rank0_pod([pod for pod in pods if runs_container(pod, kind.container)])
        if not self.settings.stream_logs or pod is None or not container_started(pod, kind.container):
            return
        name = pod["metadata"]["name"]
        if name != self.stream.pod:  # a new rank 0 pod (first read, or the runtime recreated it)
            self.stream = LogStream(pod=name)
        now = self.clock()
        if self.stream.read_at is None:
            window = {"tail_lines": self.settings.log_tail_lines}
        else:  # whole seconds, and a margin: the overlap is dropped by timestamp
            window = {"since_seconds": math.ceil(now - self.stream.read_at) + 30}
        try:
            text = self._log(name, namespace, kind.container, timestamps=True, **window)
        except Exception as err:
            log.debug("log of %s not readable yet: %s", name, err)
            return
        self.stream.read_at = now
        for line in self.stream.new_lines(text or ""):
            self.log_sink(f"[{name}] {line}")

    def kueue_reason(self, job: dict) -> str:
        """Kueue's reason for holding the job back (its Workload's QuotaReserved/Admitted message)."""
        uid, namespace = job["metadata"].get("uid"), job["metadata"]["namespace"]
        if not uid:
            return ""
        workloads = {}
        for version in KUEUE_VERSIONS:
            try:
                workloads = self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP, version, namespace, KUEUE_PLURAL, label_selector=f"{KUEUE_JOB_UID_LABEL}={uid}"
                )
                break
            except Exception:  # that version not served, Kueue not installed, or not allowed
                continue
        for workload in workloads.get("items") or []:
            for kind in ("QuotaReserved", "Admitted"):
                condition = _condition(workload, kind)
                if condition.get("status") == "False":
                    return (
                        f"Kueue workload {workload['metadata']['name']} not admitted: "
                        f"{condition.get('reason', '')}: {condition.get('message', '')}"
                    )
        return ""

    def pending_reason(self, kind: JobKind, job: dict, pods: list[dict]) -> str:
        state, reason, message = job_state(job, kind.success)
        return (
            unscheduled_reason(pods)
            or self.kueue_reason(job)
            or (f"job {state}: {reason}: {message}" if reason else f"no pods yet (job state {state})")
        )

    def delete(self, kind: JobKind, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, body={"propagationPolicy": "Foreground"}
            )
            log.info("deleted %s %s/%s", kind.kind, namespace, name)
        except Exception as err:
            if not _is_not_found(err):
                raise

    def delete_unfinished(self, namespace: str, run: str) -> list[str]:
        """Delete every job of pipeline run `run` (label RUN_LABEL) that has not finished; finished ones stay
        (a failed job is evidence; its TTL clears it). What a run's exit handler calls. Returns the names."""
        deleted = []
        for kind in KINDS.values():
            try:
                found = self.custom.list_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, label_selector=f"{RUN_LABEL}={run}"
                )
            except Exception as err:
                if _is_not_found(err):  # that operator is not installed: no jobs of its kind
                    continue
                raise
            for job in found.get("items") or []:
                if job_state(job, kind.success)[0] in ("Succeeded", "Failed"):
                    continue
                self.delete(kind, namespace, job["metadata"]["name"])
                deleted.append(job["metadata"]["name"])
        return deleted

    def launcher_disrupted(self) -> bool:
        """This process's pod is being evicted, preempted or shut down with its node (its DisruptionTarget
        condition), not stopped by a cancelled run. Unknown (no pod named, or not readable): see run()."""
        if self.launcher_pod is None:
            return False
        namespace, name = self.launcher_pod
        pod = as_dict(self.core.read_namespaced_pod(name, namespace))
        return _condition(pod, DISRUPTION_CONDITION).get("status") == "True"

    def _check_start(self, kind: JobKind, job: dict, pods: list[dict], progress: _Progress, now: float) -> None:
        """Raise JobStartFailed for a container that cannot start (see blocked_containers) once it has been
        blocked `stuck_grace_seconds` (a crash loop at once: its restarts were the patience)."""
        # keyed by container, not reason: kubelet alternates ErrImagePull and ImagePullBackOff while it retries
        threshold = crash_threshold(kind.restarts_allowed(job), self.settings.crash_restarts)
        blocked = {(b.pod, b.container): b for b in blocked_containers(pods, threshold)}
        for key in list(progress.blocked_since):
            if key not in blocked:
                del progress.blocked_since[key]
        for key, found in blocked.items():
            first = progress.blocked_since.setdefault(key, now)
            if found.reason == CRASH_LOOP or now - first >= self.settings.stuck_grace_seconds:
                namespace = job["metadata"]["namespace"]
                logs = ""
                if found.reason == CRASH_LOOP:
                    try:
                        logs = self._log(
                            found.pod,
                            namespace,
                            found.container,
                            tail_lines=self.settings.log_tail_lines,
                            previous=True,
                        )
                    except Exception as err:
                        logs = f"(logs unavailable: {err})"
                detail = f"{found.restarts} restarts: " if found.reason == CRASH_LOOP else ""
                raise JobStartFailed(
                    job["metadata"]["name"],
                    found.reason,
                    f"pod {found.pod} container {found.container}: {detail}{found.message}",
                    logs or "(the container has not run)",
                    found.pod,
                )

    def _placed(self, kind: JobKind, manifest: dict, job: dict, pods: list[dict], waited: float, limit: float) -> bool:
        """True once every pod of the job is placed; raises JobUnschedulable past `limit` seconds."""
        placed = [pod for pod in pods if _condition(pod, "PodScheduled").get("status") == "True"]
        if len(placed) >= kind.pod_count(manifest):
            return True
        if limit and waited > limit:
            reason = self.pending_reason(kind, job, pods)
            raise JobUnschedulable(
                f"{kind.kind} {job['metadata']['namespace']}/{job['metadata']['name']}: "
                f"{len(placed)} of {kind.pod_count(manifest)} pods scheduled "
                f"{waited:.0f}s after admission; pending because {reason}",
                reason,
            )
        return False

    def _follow(self, kind: JobKind, manifest: dict, limits: JobLimits) -> tuple[str, str, str, float]:
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        last_state, progress, begun = None, _Progress(), self.clock()
        while True:
            job = self._get(kind, namespace, name)
            if job is None:
                raise JobDeleted(name, "Deleted", "the job was deleted before it finished", "")
            state, reason, message = job_state(job, kind.success)
            if state != last_state:
                log.info("%s %s: %s %s", kind.kind, name, state, f"({reason}: {message})" if reason else "")
                last_state = state
            now = self.clock()
            if state in ("Succeeded", "Failed"):
                return state, reason, message, now - begun
            if is_queued(kind, job):
                self._check_queued(kind, job, progress, now, limits.admission_timeout_seconds)
                self.sleep(self.settings.poll_seconds)
                continue
            if progress.admitted_at is None:
                progress.admitted_at, progress.queued_since = now, None
            running_for = now - progress.admitted_at
            pods = self.pods(kind, namespace, name)
            self._check_start(kind, job, pods, progress, now)
            if progress.scheduled_at is None:
                if self._placed(kind, manifest, job, pods, running_for, limits.schedule_timeout_seconds):
                    progress.scheduled_at = now
            if progress.scheduled_at is not None and not progress.started:
                self._check_started(kind, manifest, pods, progress, now, limits.startup_timeout_seconds)
            self.stream_rank0(kind, namespace, pods)
            if running_for > limits.timeout_seconds:
                raise JobTimeout(
                    f"{kind.kind} {namespace}/{name} not finished {limits.timeout_seconds:.0f}s after admission "
                    f"(last state {state})"
                )
            self.sleep(self.settings.poll_seconds)

    def _check_queued(self, kind: JobKind, job: dict, progress: _Progress, now: float, limit: float) -> None:
        """Track a job waiting in its queue (again, if Kueue preempted it); raise JobQueued past `limit` (0:
        none), which run() leaves queued."""
        name = job["metadata"]["name"]
        if progress.admitted_at is not None:
            log.info("%s %s is back in its queue (preempted): waiting for admission again", kind.kind, name)
            progress.requeued()
        if progress.queued_since is None:
            progress.queued_since = now
        queued = now - progress.queued_since
        if limit and queued > limit:
            why = self.pending_reason(kind, job, [])
            raise JobQueued(
                f"{kind.kind} {job['metadata']['namespace']}/{name} still queued after {queued:.0f}s "
                f"(admission_timeout); left in its queue: {why}",
                why,
            )

    def _check_started(
        self, kind: JobKind, manifest: dict, pods: list[dict], progress: _Progress, now: float, limit: float
    ) -> None:
        """Mark the job started once every trainer container runs; raise JobStartFailed when they have not
        `limit` seconds after every pod was placed (0: no limit)."""
        trainers = [pod for pod in pods if runs_container(pod, kind.container)]  # not a runtime's initializer
        progress.started = len(trainers) >= kind.pod_count(manifest) and all(
            container_started(pod, kind.container) for pod in trainers
        )
        placed_for = 0.0 if progress.scheduled_at is None else now - progress.scheduled_at
        if not progress.started and limit and placed_for > limit:
            raise JobStartFailed(
                manifest["metadata"]["name"],
                "StartupDeadlineExceeded",
                f"containers not started {placed_for:.0f}s after every "
                f"pod was placed: {not_started_reason(trainers, kind.container)}",
                "(the containers have not run)",
            )

    def run(self, manifest: dict, limits: JobLimits, *, cleanup: bool = True) -> JobOutcome:
        """Submit/re-attach and follow to the end (see the module docstring) within `limits`; `cleanup`: delete
        the job once it succeeded."""
        kind = kind_of(manifest)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        _, reattached = self.submit(manifest)
        self.stream = LogStream()
        try:
            state, reason, message, seconds = self._follow(kind, manifest, limits)
        except StepCancelled:
            self._stopped(kind, namespace, name)
            raise
        except JobQueued:  # waiting is not stuck: the job keeps its place in the queue
            raise
        except (JobStartFailed, JobTimeout):  # it holds (or would hold) GPUs it cannot use
            log.warning("deleting %s %s/%s: it cannot make progress", kind.kind, namespace, name)
            self.delete(kind, namespace, name)
            raise
        try:  # what rank 0 logged since the last poll
            self.stream_rank0(kind, namespace, self.pods(kind, namespace, name))
        except Exception as err:
            log.debug("last log lines of %s not streamed: %s", name, err)
        pod, logs = self.pod_logs(kind, namespace, name)
        if state == "Failed":
            log.warning(
                "%s %s/%s failed: kept for inspection until its TTL (kubectl describe %s %s -n %s)",
                kind.kind,
                namespace,
                name,
                kind.kind.lower(),
                name,
                namespace,
            )
            raise JobFailed(name, reason or "Failed", message, logs, pod)
        if cleanup:
            self.delete(kind, namespace, name)
        return JobOutcome(name, state, reattached, seconds, logs)

    def _stopped(self, kind: JobKind, namespace: str, name: str) -> None:
        """SIGTERM: a cancelled run deletes its job; an evicted launcher leaves it to the step's retry."""
        if self.launcher_pod is not None:
            try:
                disrupted = self.launcher_disrupted()
            except Exception as err:  # unknown: keep the job (the run's exit handler deletes it if cancelled)
                log.warning("cannot read this launcher's pod (%s): leaving %s %s running", err, kind.kind, name)
                return
            if disrupted:
                log.warning(
                    "launcher pod disrupted (%s): leaving %s %s/%s running; the step's retry re-attaches",
                    DISRUPTION_CONDITION,
                    kind.kind,
                    namespace,
                    name,
                )
                return
        log.warning("step cancelled: deleting %s %s/%s", kind.kind, namespace, name)
        self.delete(kind, namespace, name)
