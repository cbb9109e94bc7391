"""A fake Kubernetes API at the client boundary (CustomObjectsApi + CoreV1Api) that replays a
recorded sequence of cluster states, one per poll of the job.

Every object it hands out has the real shape: jobs (with their status) validate against the CRDs
in tests/crds/, pods come back as the client's own V1PodList models deserialised from API JSON.
The last frame repeats, so "pending forever" is one frame.
"""

from __future__ import annotations

import copy
import json

from kubernetes.client import ApiClient, ApiException

import k8s_checks

DELETED = "DELETED"  # a frame: the job is gone (someone ran kubectl delete)


class _Response:  # what ApiClient.deserialize reads
    def __init__(self, obj):
        self.data = json.dumps(obj)


def pod_list(pods: list[dict]):
    return ApiClient().deserialize(_Response({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                              "items": pods}), "V1PodList")


class FakeCluster:
    """`frames`: [{"status": job status, "pods": [...], "workloads": [...]} | DELETED, ...]."""

    def __init__(self, frames: list | None = None, logs: dict[str, str] | str = "step 1 loss 0.69\n",
                 on_poll=None):
        self.jobs: dict[tuple[str, str], dict] = {}
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.frames = list(frames or [])
        self.frame: dict = {}
        self.logs = logs
        self.log_requests: list[dict] = []
        self.polls = 0
        self.checked: set[int] = set()
        self.on_poll = on_poll  # called with the poll number (e.g. to deliver a signal)

    def _advance(self, key) -> None:
        if self.frames:
            frame = self.frames.pop(0) if len(self.frames) > 1 else self.frames[0]
            if frame == DELETED:
                self.jobs.pop(key, None)
                self.frame = {}
                return
            self.frame = frame
            job = self.jobs[key]
            job["status"] = copy.deepcopy(frame.get("status", {}))
            job["metadata"].setdefault("uid", "6f1c2e8a-0b7d-4a51-9c1e-2d4f8b7a9e10")
            if id(frame) not in self.checked:  # the recorded status has the CRD's shape (once per frame)
                k8s_checks.validate_crd_object(job)
                self.checked.add(id(frame))

    # CustomObjectsApi
    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        key = (namespace, name)
        if key in self.jobs:  # a poll of an existing job (not the 404 before creating it)
            self.polls += 1
            if self.on_poll:
                self.on_poll(self.polls)
            self._advance(key)
        job = self.jobs.get(key)
        if job is None:
            raise ApiException(status=404, reason="Not Found")
        assert f"{group}/{version}" == job["apiVersion"] and plural == job["kind"].lower() + "s"
        return copy.deepcopy(job)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert f"{group}/{version}" == body["apiVersion"] and plural == body["kind"].lower() + "s"
        k8s_checks.validate_crd_object(body)  # what the API server would receive
        key = (namespace, body["metadata"]["name"])
        if key in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[key] = copy.deepcopy(body)
        self.created.append(copy.deepcopy(body))
        return copy.deepcopy(body)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None):
        if (namespace, name) not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        del self.jobs[(namespace, name)]
        self.deleted.append(name)

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        assert (group, plural) == ("kueue.x-k8s.io", "workloads")
        key, _, value = label_selector.partition("=")
        items = [w for w in self.frame.get("workloads", []) if w["metadata"]["labels"].get(key) == value]
        return {"apiVersion": f"{group}/{version}", "kind": "WorkloadList", "items": copy.deepcopy(items)}

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=""):
        key, _, value = label_selector.partition("=")
        return pod_list([p for p in self.frame.get("pods", []) if p["metadata"]["labels"].get(key) == value])

    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None, previous=False):
        self.log_requests.append({"pod": name, "container": container, "tail_lines": tail_lines,
                                  "previous": previous})
        return self.logs if isinstance(self.logs, str) else self.logs.get(name, "")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
