"""Create a training job (PyTorchJob or TrainJob) or re-attach to it, follow it to its end, clean up.

Restart-safe: the job name is derived from the launch key, so a pipeline step whose pod was
restarted finds the job it already created (same launch key label) and follows it instead of
starting a second one. The step ends when the job ends, whichever way:
  succeeded          -> JobOutcome (with rank 0's log tail)
  failed             -> JobFailed: the operator's reason (BackoffLimitExceeded, DeadlineExceeded
                        when the job's activeDeadlineSeconds ran out, ...) and the log tail of the
                        pod that failed, not just rank 0's
  deleted under us   -> JobDeleted
  never scheduled    -> JobUnschedulable after `schedule_timeout_seconds`, naming why the pods
                        wait (the scheduler's PodScheduled message, or Kueue's workload message)
  still running      -> JobTimeout after `timeout_seconds` (a backstop behind the job's own deadline)
  step cancelled     -> StepCancelled (SIGTERM from a cancelled run, see launch.py)
and then deletes the job (always when cancelled; otherwise unless cleanup=False).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from clipdpo.cluster import pytorchjob, trainjob
from clipdpo.cluster.jobspec import LABEL_KEY

log = logging.getLogger("clipdpo.cluster")
KUEUE_GROUP, KUEUE_VERSIONS, KUEUE_PLURAL = "kueue.x-k8s.io", ("v1beta2", "v1beta1"), "workloads"  # newest first
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


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


KINDS = {
    pytorchjob.KIND: JobKind(pytorchjob.KIND, pytorchjob.GROUP, pytorchjob.VERSION, pytorchjob.PLURAL,
                             pytorchjob.CONTAINER_NAME, "Succeeded", "training.kubeflow.org/job-name",
                             lambda job: sum(r["replicas"] for r in job["spec"]["pytorchReplicaSpecs"].values())),
    trainjob.KIND: JobKind(trainjob.KIND, trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL,
                           trainjob.CONTAINER_NAME, "Complete", "jobset.sigs.k8s.io/jobset-name",
                           lambda job: job["spec"]["trainer"]["numNodes"]),
}


def kind_of(manifest: dict) -> JobKind:
    kind = KINDS.get(manifest.get("kind"))
    if kind is None or manifest.get("apiVersion") != f"{kind.group}/{kind.version}":
        raise ValueError(f"cannot follow {manifest.get('apiVersion')} {manifest.get('kind')}: expected one of "
                         + ", ".join(f"{k.group}/{k.version} {k.kind}" for k in KINDS.values()))
    return kind


class JobFailed(RuntimeError):
    def __init__(self, name: str, reason: str, message: str, logs: str, pod: str = ""):
        where = f"pod {pod}" if pod else "no pod"
        super().__init__(f"{name} failed: {reason}: {message}\n--- {where} log (tail) ---\n{logs}")
        self.reason, self.message, self.logs, self.pod = reason, message, logs, pod


class JobDeleted(JobFailed):
    pass


class JobTimeout(RuntimeError):
    pass


class JobUnschedulable(JobTimeout):
    def __init__(self, message: str, pending_reason: str):
        super().__init__(message)
        self.pending_reason = pending_reason


class JobConflict(RuntimeError):
    pass


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


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def unscheduled_reason(pods: list[dict]) -> str:
    """The scheduler's word on the first pod it could not place ('' when none is refused)."""
    for pod in pods:
        scheduled = _condition(pod, "PodScheduled")
        if scheduled.get("status") == "False":
            return (f"pod {pod['metadata']['name']}: {scheduled.get('reason', 'Pending')}: "
                    f"{scheduled.get('message', '')}").rstrip(": ")
    return ""


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


def log_pod(pods: list[dict], container: str) -> tuple[str, bool]:
    """(pod name, previous) whose log explains the end: a failed pod first, else rank 0 (first by name)."""
    ordered = sorted(pods, key=lambda pod: pod["metadata"]["name"])
    for pod in ordered:
        failed, previous = failed_container(pod, container)
        if failed:
            return pod["metadata"]["name"], previous
    return (ordered[0]["metadata"]["name"], False) if ordered else ("", False)


class JobFollower:
    """Talks to the cluster only through two client objects: CustomObjectsApi and CoreV1Api."""

    def __init__(self, custom_api, core_api, *, poll_seconds: float = 15.0, log_tail_lines: int = 200,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.custom = custom_api
        self.core = core_api
        self.poll_seconds = poll_seconds
        self.log_tail_lines = log_tail_lines
        self.clock = clock
        self.sleep = sleep

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
                raise JobConflict(f"{kind.kind} {namespace}/{name} exists but belongs to another launch "
                                  f"(label {LABEL_KEY} differs); delete it or use another run")
            log.info("re-attaching to %s %s/%s created by an earlier attempt of this step", kind.kind, namespace, name)
            return existing, True
        try:
            created = self.custom.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural,
                                                                  manifest)
        except Exception as err:
            if getattr(err, "status", None) == 409:  # created concurrently by a twin attempt: follow it
                return self._get(kind, namespace, name), True
            raise
        log.info("created %s %s/%s", kind.kind, namespace, name)
        return created, False

    def pods(self, kind: JobKind, namespace: str, name: str) -> list[dict]:
        found = self.core.list_namespaced_pod(namespace, label_selector=f"{kind.pod_job_label}={name}")
        return [as_dict(pod) for pod in as_dict(found).get("items") or []]

    def pod_logs(self, kind: JobKind, namespace: str, name: str) -> tuple[str, str]:
        """(pod, its log tail): the failed pod's if one failed, else rank 0's. Best effort."""
        try:
            pod, previous = log_pod(self.pods(kind, namespace, name), kind.container)
            if not pod:
                return "", "(no pod found)"
            extra = {"previous": True} if previous else {}
            return pod, self.core.read_namespaced_pod_log(pod, namespace, container=kind.container,
                                                          tail_lines=self.log_tail_lines, **extra)
        except Exception as err:  # logs are best effort: the failure reason is what matters
            return "", f"(logs unavailable: {err})"

    def kueue_reason(self, job: dict) -> str:
        """Kueue's reason for holding the job back (its Workload's QuotaReserved/Admitted message)."""
        uid, namespace = job["metadata"].get("uid"), job["metadata"]["namespace"]
        if not uid:
            return ""
        workloads = {}
        for version in KUEUE_VERSIONS:
            try:
                workloads = self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP, version, namespace, KUEUE_PLURAL, label_selector=f"{KUEUE_JOB_UID_LABEL}={uid}")
                break
            except Exception:  # that version not served, Kueue not installed, or not allowed
                continue
        for workload in workloads.get("items") or []:
            for kind in ("QuotaReserved", "Admitted"):
                condition = _condition(workload, kind)
                if condition.get("status") == "False":
                    return (f"Kueue workload {workload['metadata']['name']} not admitted: "
                            f"{condition.get('reason', '')}: {condition.get('message', '')}")
        return ""

    def pending_reason(self, kind: JobKind, job: dict, pods: list[dict]) -> str:
        state, reason, message = job_state(job, kind.success)
        return (unscheduled_reason(pods) or self.kueue_reason(job)
                or (f"job {state}: {reason}: {message}" if reason else f"no pods yet (job state {state})"))

    def delete(self, kind: JobKind, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                                        body={"propagationPolicy": "Foreground"})
            log.info("deleted %s %s/%s", kind.kind, namespace, name)
        except Exception as err:
            if not _is_not_found(err):
                raise

    def _scheduled(self, kind: JobKind, manifest: dict, job: dict, waited: float, limit: float) -> bool:
        """True once every pod of the job is placed; raises JobUnschedulable past `limit` seconds."""
        pods = self.pods(kind, job["metadata"]["namespace"], job["metadata"]["name"])
        placed = [pod for pod in pods if _condition(pod, "PodScheduled").get("status") == "True"]
        if len(placed) >= kind.pod_count(manifest):
            return True
        if limit and waited > limit:
            reason = self.pending_reason(kind, job, pods)
            raise JobUnschedulable(f"{kind.kind} {job['metadata']['namespace']}/{job['metadata']['name']}: "
                                   f"{len(placed)} of {kind.pod_count(manifest)} pods scheduled after "
                                   f"{waited:.0f}s; pending because {reason}", reason)
        return False

    def _follow(self, kind: JobKind, manifest: dict, started: float, timeout_seconds: float,
                schedule_timeout_seconds: float) -> tuple[str, str, str, float]:
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        last_state, scheduled = None, False
        while True:
            job = self._get(kind, namespace, name)
            if job is None:
                raise JobDeleted(name, "Deleted", "the job was deleted before it finished", "")
            state, reason, message = job_state(job, kind.success)
            if state != last_state:
                log.info("%s %s: %s %s", kind.kind, name, state, f"({reason}: {message})" if reason else "")
                last_state = state
            if state in ("Succeeded", "Failed"):
                return state, reason, message, self.clock() - started
            waited = self.clock() - started
            if not scheduled:
                scheduled = self._scheduled(kind, manifest, job, waited, schedule_timeout_seconds)
            if waited > timeout_seconds:
                raise JobTimeout(f"{kind.kind} {namespace}/{name} not finished after {timeout_seconds:.0f}s "
                                 f"(last state {state})")
            self.sleep(self.poll_seconds)

    def run(self, manifest: dict, *, timeout_seconds: float, schedule_timeout_seconds: float = 0,
            cleanup: bool = True) -> JobOutcome:
        """Submit/re-attach, follow to the end (see the module docstring), then clean up.

        `schedule_timeout_seconds` (0: no limit) bounds the wait for every pod to be placed."""
        kind = kind_of(manifest)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        started = self.clock()
        _, reattached = self.submit(manifest)
        try:
            state, reason, message, seconds = self._follow(kind, manifest, started, timeout_seconds,
                                                           schedule_timeout_seconds)
            pod, logs = self.pod_logs(kind, namespace, name)
            if state == "Failed":
                raise JobFailed(name, reason or "Failed", message, logs, pod)
            return JobOutcome(name, state, reattached, seconds, logs)
        except StepCancelled:
            log.warning("step cancelled: deleting %s %s/%s", kind.kind, namespace, name)
            self.delete(kind, namespace, name)
            raise
        finally:
            if cleanup:
                self.delete(kind, namespace, name)
