"""Create a PyTorchJob (or re-attach to it), follow it to the end, report, clean up.

Restart-safe: the job name is derived from the launch key, so a pipeline step whose pod was
restarted finds the job it already created (same launch key label) and follows it instead of
starting a second one. Every wait has a deadline. A failed job raises with the operator's
failure reason and message and the tail of the master's log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from clipdpo.cluster.pytorchjob import GROUP, LABEL_KEY, PLURAL, VERSION

log = logging.getLogger("clipdpo.cluster")


class JobFailed(RuntimeError):
    def __init__(self, name: str, reason: str, message: str, logs: str):
        super().__init__(f"PyTorchJob {name} failed: {reason}: {message}\n--- master log (tail) ---\n{logs}")
        self.reason, self.message, self.logs = reason, message, logs


class JobTimeout(RuntimeError):
    pass


class JobConflict(RuntimeError):
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


def job_state(job: dict) -> tuple[str, str, str]:
    """(state, reason, message) from the operator's conditions: the newest true terminal/running one."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for wanted in ("Failed", "Succeeded"):
        for condition in conditions:
            if condition.get("type") == wanted and condition.get("status") == "True":
                return wanted, condition.get("reason", ""), condition.get("message", "")
    for condition in reversed(conditions):
        if condition.get("status") == "True":
            return condition.get("type", "Unknown"), condition.get("reason", ""), condition.get("message", "")
    return "Pending", "", ""


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

    def _get(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except Exception as err:  # kubernetes.client.ApiException
            if _is_not_found(err):
                return None
            raise

    def submit(self, manifest: dict) -> tuple[dict, bool]:
        """Create the job, or return the existing one with the same launch key (re-attach)."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        key = manifest["metadata"].get("labels", {}).get(LABEL_KEY)
        existing = self._get(namespace, name)
        if existing is not None:
            if existing.get("metadata", {}).get("labels", {}).get(LABEL_KEY) != key:
                raise JobConflict(f"PyTorchJob {namespace}/{name} exists but belongs to another launch "
                                  f"(label {LABEL_KEY} differs); delete it or use another run")
            log.info("re-attaching to PyTorchJob %s/%s created by an earlier attempt of this step", namespace, name)
            return existing, True
        try:
            created = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        except Exception as err:
            if getattr(err, "status", None) == 409:  # created concurrently by a twin attempt: follow it
                return self._get(namespace, name), True
            raise
        log.info("created PyTorchJob %s/%s", namespace, name)
        return created, False

    def master_logs(self, namespace: str, name: str) -> str:
        selector = f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master"
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
            items = pods.get("items", []) if isinstance(pods, dict) else pods.items
            if not items:
                return "(no master pod found)"
            pod = items[0]
            pod_name = pod["metadata"]["name"] if isinstance(pod, dict) else pod.metadata.name
            return self.core.read_namespaced_pod_log(pod_name, namespace, container="pytorch",
                                                     tail_lines=self.log_tail_lines)
        except Exception as err:  # logs are best effort: the failure reason is what matters
            return f"(logs unavailable: {err})"

    def delete(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                        body={"propagationPolicy": "Foreground"})
            log.info("deleted PyTorchJob %s/%s", namespace, name)
        except Exception as err:
            if not _is_not_found(err):
                raise

    def run(self, manifest: dict, *, timeout_seconds: float, cleanup: bool = True) -> JobOutcome:
        """Submit/re-attach, wait for Succeeded or Failed within `timeout_seconds`, then clean up."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        started = self.clock()
        _, reattached = self.submit(manifest)
        last_state = None
        try:
            while True:
                job = self._get(namespace, name)
                if job is None:
                    raise JobFailed(name, "Deleted", "the job disappeared before finishing", "")
                state, reason, message = job_state(job)
                if state != last_state:
                    log.info("PyTorchJob %s: %s %s", name, state, f"({reason}: {message})" if reason else "")
                    last_state = state
                if state == "Succeeded":
                    return JobOutcome(name, state, reattached, self.clock() - started,
                                      self.master_logs(namespace, name))
                if state == "Failed":
                    raise JobFailed(name, reason or "Failed", message, self.master_logs(namespace, name))
                if self.clock() - started > timeout_seconds:
                    raise JobTimeout(f"PyTorchJob {namespace}/{name} not finished after {timeout_seconds:.0f}s "
                                     f"(last state {state})" + ("; it was deleted" if cleanup else ""))
                self.sleep(self.poll_seconds)
        finally:
            if cleanup:
                self.delete(namespace, name)
