"""A fake Kubernetes API at the client boundary (CustomObjectsApi + CoreV1Api) that replays a
recorded sequence of cluster states, one per poll of the job.

Every object it hands out has the real shape: jobs (with their status) validate against the CRDs
in tests/crds/, pods come back as the client's own V1PodList models deserialised from API JSON.
The last frame repeats, so "pending forever" is one frame.
"""

from __future__ import annotations

import copy
import datetime
import json

import k8s_checks
from kubernetes.client import ApiClient, ApiException

DELETED = "DELETED"  # a frame: the job is gone (someone ran kubectl delete)
# What a Kubeflow Trainer v2.3.0 publishes about itself (its manager overlay's ConfigMap, in kubeflow-system).
TRAINER_PUBLIC = ("kubeflow-system", "kubeflow-trainer-public")
TRAINER_V2_3 = {TRAINER_PUBLIC: {"kubeflow_trainer_version": "v2.3.0"}}


class _Response:  # what ApiClient.deserialize reads
    def __init__(self, obj):
        self.data = json.dumps(obj)


def pod_list(pods: list[dict]):
    return ApiClient().deserialize(
        _Response({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}), "V1PodList"
    )


T0 = datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=datetime.timezone.utc)


def log_timestamp(seconds: float) -> str:
    """Kubelet's RFC3339Nano stamp for T0 + seconds: the fraction's trailing zeros dropped (…:01.5Z, …:02Z)."""
    stamp = (T0 + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return stamp + "Z"


class FakeCluster:
    """`frames`: [{"status": job status, "pods": [...], "workloads": [...]} | DELETED, ...].

    `log_lines`: {pod: [(seconds, line), ...]}: a log that grows with `clock` (what kubelet serves with
    timestamps, sinceSeconds and tailLines); without it, `logs` is each pod's whole log.
    `step_pods`: the pipeline step's own pods by name (read_namespaced_pod, delete_pod).
    `config_maps` (an attribute): {(namespace, name): data} (read_namespaced_config_map); a Trainer v2.3.0's.
    `served_crds`: {kind: CRD file} an older operator serves instead of tests/crds: the fields that CRD lacks
    are refused by a create with field_validation="Strict" (a 400, as the API server answers), else dropped."""

    def __init__(
        self,
        frames: list | None = None,
        logs: dict[str, str] | str = "step 1 loss 0.69\n",
        on_poll=None,
        log_lines: dict[str, list[tuple[float, str]]] | None = None,
        clock=None,
        step_pods: dict[str, dict] | None = None,
        served_crds: dict[str, str] | None = None,
    ):
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
        self.log_lines = log_lines
        self.clock = clock
        self.step_pods = dict(step_pods or {})
        self.garbage_collected: list[str] = []
        self.config_maps = dict(TRAINER_V2_3)  # replace it to publish another version, or none
        self.served_crds = dict(served_crds or {})

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

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, field_validation=None):
        assert f"{group}/{version}" == body["apiVersion"] and plural == body["kind"].lower() + "s"
        k8s_checks.validate_crd_object(body)  # what the API server would receive
        if body["kind"] in self.served_crds:
            undeclared = k8s_checks.undeclared_fields(body, self.served_crds[body["kind"]])
            if undeclared and field_validation == "Strict":
                raise strict_decoding_error(body, undeclared)
            body = k8s_checks.without_fields(body, undeclared)  # the API server's default: dropped, a warning
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
        key, _, value = label_selector.partition("=")
        if (group, plural) == ("kueue.x-k8s.io", "workloads"):
            items = [w for w in self.frame.get("workloads", []) if w["metadata"]["labels"].get(key) == value]
            return {"apiVersion": f"{group}/{version}", "kind": "WorkloadList", "items": copy.deepcopy(items)}
        items = [
            job
            for (ns, _), job in self.jobs.items()
            if ns == namespace
            and job["apiVersion"] == f"{group}/{version}"
            and plural == job["kind"].lower() + "s"
            and job["metadata"].get("labels", {}).get(key) == value
        ]
        return {"apiVersion": f"{group}/{version}", "kind": "List", "items": copy.deepcopy(items)}

    # CoreV1Api
    def read_namespaced_config_map(self, name, namespace):
        if (namespace, name) not in self.config_maps:
            raise ApiException(status=404, reason="Not Found")
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
        return ApiClient().deserialize(
            _Response({**config_map, "data": self.config_maps[(namespace, name)]}), "V1ConfigMap"
        )

    def list_namespaced_pod(self, namespace, label_selector=""):
        key, _, value = label_selector.partition("=")
        return pod_list([p for p in self.frame.get("pods", []) if p["metadata"]["labels"].get(key) == value])

    def read_namespaced_pod_log(
        self, name, namespace, container=None, tail_lines=None, previous=False, timestamps=False, since_seconds=None
    ):
        self.log_requests.append(
            {
                "pod": name,
                "container": container,
                "tail_lines": tail_lines,
                "previous": previous,
                "timestamps": timestamps,
                "since_seconds": since_seconds,
            }
        )
        if self.log_lines is None:
            text = self.logs if isinstance(self.logs, str) else self.logs.get(name, "")
            return "".join(f"{log_timestamp(0)} {line}\n" for line in text.splitlines()) if timestamps else text
        now = self.clock()
        lines = [
            (t, line)
            for t, line in self.log_lines.get(name, [])
            if t <= now and (since_seconds is None or t >= now - since_seconds)
        ]
        if tail_lines is not None:
            lines = lines[-tail_lines:]
        return "".join((f"{log_timestamp(t)} " if timestamps else "") + line + "\n" for t, line in lines)

    def read_namespaced_pod(self, name, namespace):
        if name not in self.step_pods:
            raise ApiException(status=404, reason="Not Found")
        return ApiClient().deserialize(_Response(self.step_pods[name]), "V1Pod")

    def delete_pod(self, name):
        """The step's pod is gone (evicted, drained): Kubernetes' garbage collector deletes what it owned."""
        self.step_pods.pop(name, None)
        for key, job in list(self.jobs.items()):
            if any(
                ref.get("kind") == "Pod" and ref.get("name") == name
                for ref in job["metadata"].get("ownerReferences", [])
            ):
                del self.jobs[key]
                self.garbage_collected.append(key[1])


def strict_decoding_error(body: dict, fields: list[str]) -> ApiException:
    """The API server's answer to a strict create with fields its CRD does not declare (400, a Status)."""
    kind, version = body["kind"], body["apiVersion"].split("/")[-1]
    unknown = ", ".join(f'unknown field "{field}"' for field in fields)
    err = ApiException(status=400, reason="Bad Request")
    err.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {unknown}',
            "reason": "BadRequest",
            "code": 400,
        }
    )
    return err


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
