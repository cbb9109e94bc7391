"""The train launcher against a fake Kubernetes API at the client boundary (CustomObjectsApi,
CoreV1Api): create, follow, fail with reason and logs, time out, re-attach after a restart,
clean up; every manifest it sends is schema-validated."""

from __future__ import annotations

import copy

import pytest
from kubernetes.client import ApiException

from clipdpo.cluster import pytorchjob
from clipdpo.cluster.follow import JobConflict, JobFailed, JobFollower, JobTimeout
from clipdpo.cluster.launch import launch

import k8s_checks


class FakeCluster:
    """Stores PyTorchJobs like the API server; `script` gives the status each poll reports."""

    def __init__(self, script: list[list[dict]] | None = None, logs: str = "step 1 loss 0.69\n"):
        self.jobs: dict[tuple[str, str], dict] = {}
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.script = list(script or [])
        self.logs = logs
        self.log_requests: list[dict] = []

    # CustomObjectsApi
    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        job = self.jobs.get((namespace, name))
        if job is None:
            raise ApiException(status=404, reason="Not Found")
        if self.script:
            job["status"] = {"conditions": self.script.pop(0)}
        return copy.deepcopy(job)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        k8s_checks.validate_pytorchjob(body)  # what the API server would receive
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

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=""):
        assert "replica-type=master" in label_selector
        name = label_selector.split("job-name=")[1].split(",")[0]
        return {"items": [{"metadata": {"name": f"{name}-master-0"}}]}

    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None):
        self.log_requests.append({"pod": name, "container": container, "tail_lines": tail_lines})
        return self.logs


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


CREATED = [condition("Created", "PyTorchJobCreated")]
RUNNING = [condition("Created"), condition("Running", "PyTorchJobRunning")]
SUCCEEDED = RUNNING + [condition("Succeeded", "PyTorchJobSucceeded", "job succeeded")]
FAILED = RUNNING + [condition("Failed", "PyTorchJobFailed", "master-0 exited with code 137 (OOMKilled)")]


def spec(**overrides) -> pytorchjob.TrainJobSpec:
    values = dict(name=pytorchjob.job_name("run-1/s3://b/model"), namespace="ml", image="ghcr.io/x/clipdpo-train:0.1.0",
                  train_args=["--input", "s3://b/pairs", "--output", "s3://b/model"], nodes=4, gpus_per_node=8,
                  node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    values.update(overrides)
    return pytorchjob.TrainJobSpec(**values)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def follower(cluster, clock=None) -> JobFollower:
    clock = clock or FakeClock()
    return JobFollower(cluster, cluster, poll_seconds=10, clock=clock, sleep=clock.sleep)


def test_manifest_is_a_valid_multi_node_pytorchjob():
    job = pytorchjob.build(spec())
    k8s_checks.validate_pytorchjob(job)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["command"][:3] == ["torchrun", "--nnodes=4", "--nproc-per-node=8"]
    assert container["args"] == ["--input", "s3://b/pairs", "--output", "s3://b/model"]
    assert container["envFrom"] == [{"secretRef": {"name": "clipdpo-s3"}}]
    pod = replicas["Master"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["serviceAccountName"] == "clipdpo-train"
    assert job["spec"]["nprocPerNode"] == "8"
    single = pytorchjob.build(spec(nodes=1))
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]


def test_validator_catches_what_it_should():
    bad = pytorchjob.build(spec())
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(AssertionError, match="named 'pytorch'"):
        k8s_checks.validate_pytorchjob(bad)
    typo = pytorchjob.build(spec())
    typo["spec"]["runPolicy"]["cleanupPolicy"] = "All"
    with pytest.raises(AssertionError, match="unknown field"):
        k8s_checks.validate_pytorchjob(typo)
    wrong_pod = pytorchjob.build(spec())
    wrong_pod["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"] = "lots"
    with pytest.raises(Exception):
        k8s_checks.validate_pytorchjob(wrong_pod)


def test_spec_refuses_unpinned_images_and_bad_names():
    with pytest.raises(ValueError, match="pin"):
        spec(image="ghcr.io/x/clipdpo-train:latest")
    with pytest.raises(ValueError, match="no tag"):
        spec(image="ghcr.io/x/clipdpo-train")
    with pytest.raises(ValueError, match="valid Kubernetes name"):
        spec(name="Train_Job")


def test_created_followed_succeeded_and_cleaned_up():
    cluster = FakeCluster(script=[CREATED, RUNNING, RUNNING, SUCCEEDED])
    outcome = launch(spec(), "run-1/s3://b/model", timeout_seconds=3600, follower=follower(cluster))
    assert outcome.state == "Succeeded" and not outcome.reattached
    assert len(cluster.created) == 1 and cluster.deleted == [spec().name]
    assert cluster.created[0]["metadata"]["labels"][pytorchjob.LABEL_KEY] == pytorchjob.launch_label("run-1/s3://b/model")
    assert "loss" in outcome.logs and cluster.log_requests[0]["container"] == "pytorch"


def test_failure_reports_reason_message_and_master_log_then_cleans_up():
    cluster = FakeCluster(script=[RUNNING, FAILED], logs="Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory\n")
    with pytest.raises(JobFailed) as failure:
        launch(spec(), "run-1/s3://b/model", timeout_seconds=3600, follower=follower(cluster))
    assert failure.value.reason == "PyTorchJobFailed"
    assert "OOMKilled" in str(failure.value) and "CUDA out of memory" in str(failure.value)
    assert cluster.deleted == [spec().name]


def test_deadline_stops_waiting_and_deletes_the_job():
    cluster = FakeCluster(script=[RUNNING] * 1000)
    clock = FakeClock()
    with pytest.raises(JobTimeout, match="not finished after 60s"):
        launch(spec(), "run-1/s3://b/model", timeout_seconds=60, follower=follower(cluster, clock))
    assert clock.now <= 80 and cluster.deleted == [spec().name]


def test_restarted_step_reattaches_instead_of_creating_a_second_job():
    cluster = FakeCluster(script=[RUNNING])
    first = follower(cluster)
    manifest = pytorchjob.build(spec())
    manifest["metadata"]["labels"][pytorchjob.LABEL_KEY] = pytorchjob.launch_label("run-1/s3://b/model")
    first.submit(manifest)  # the step's first pod created the job, then died
    cluster.script = [RUNNING, SUCCEEDED]
    outcome = launch(spec(), "run-1/s3://b/model", timeout_seconds=3600, follower=follower(cluster))
    assert outcome.reattached and len(cluster.created) == 1


def test_a_foreign_job_with_the_same_name_is_not_adopted():
    cluster = FakeCluster()
    other = pytorchjob.build(spec())
    other["metadata"]["labels"][pytorchjob.LABEL_KEY] = "someone-else"
    cluster.jobs[("ml", other["metadata"]["name"])] = other
    with pytest.raises(JobConflict, match="another launch"):
        launch(spec(), "run-1/s3://b/model", timeout_seconds=60, follower=follower(cluster), cleanup=False)


def test_a_job_deleted_under_us_is_a_failure():
    class Vanishing(FakeCluster):
        def get_namespaced_custom_object(self, *args):
            if self.created:
                self.jobs.clear()
            return super().get_namespaced_custom_object(*args)

    cluster = Vanishing()
    with pytest.raises(JobFailed, match="disappeared"):
        launch(spec(), "run-1/s3://b/model", timeout_seconds=60, follower=follower(cluster))
