"""The step that follows a training job ends when the job ends, every way it can end, for both
launchers (PyTorchJob, TrainJob): replayed recordings of the cluster (tests/job_recordings.py)
through a fake API at the client boundary, a fake clock, and a wall-clock alarm per test."""

from __future__ import annotations

import json

import os
import signal

import pytest

import job_recordings as rec
import k8s_checks
from clipdpo.cluster import jobspec
from clipdpo.cluster.follow import (JobConflict, JobDeleted, JobFailed, JobFollower, JobTimeout, JobUnschedulable,
                                    StepCancelled, log_pod)
from clipdpo.cluster.launch import build_manifest, launch, owner_from_env
from fake_k8s import FakeClock, FakeCluster

KINDS = {"pytorchjob": "PyTorchJob", "trainjob": "TrainJob"}
KEY = "run-1/s3://b/model"
WALL_SECONDS = 20  # each test replays a handful of polls: far below this on any machine


@pytest.fixture(autouse=True)
def wall_clock_limit():
    def expired(signum, frame):
        raise TimeoutError(f"test still running after {WALL_SECONDS}s: the follower did not end")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(WALL_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def spec(**overrides) -> jobspec.TrainJobSpec:
    return k8s_checks.train_spec(**{"name": jobspec.job_name(KEY), "node_selector": {}, **overrides})


def follower(cluster, clock=None) -> JobFollower:
    clock = clock or FakeClock()
    return JobFollower(cluster, cluster, poll_seconds=15, clock=clock, sleep=clock.sleep)


def run(cluster, launcher, *, clock=None, timeout=3600.0, schedule_timeout=600.0, cleanup=True, **spec_args):
    return launch(spec(**spec_args), KEY, launcher=launcher, timeout_seconds=timeout, follower=follower(cluster, clock),
                  schedule_timeout_seconds=schedule_timeout, cleanup=cleanup)


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_success_returns_rank0_log_and_deletes_the_job(launcher):
    name = spec().name
    cluster = FakeCluster(rec.succeeded(KINDS[launcher], name, 4))
    outcome = run(cluster, launcher)
    assert outcome.state == "Succeeded" and not outcome.reattached and cluster.polls == 4
    assert len(cluster.created) == 1 and cluster.deleted == [name]
    assert cluster.created[0]["kind"] == KINDS[launcher]
    rank0 = rec.pods(KINDS[launcher], name, 4)[0]["metadata"]["name"]
    assert cluster.log_requests[-1]["pod"] == rank0
    assert cluster.log_requests[-1]["container"] == ("pytorch" if launcher == "pytorchjob" else "node")


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_failure_names_the_reason_and_prints_the_failed_pods_log(launcher):
    name = spec().name
    worker = rec.pods(KINDS[launcher], name, 4)[2]["metadata"]["name"]
    logs = {worker: "step 41 loss 0.61\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"}
    cluster = FakeCluster(rec.failed(KINDS[launcher], name, 4, failed_index=2), logs=logs)
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher)
    expected = "BackoffLimitExceeded" if launcher == "pytorchjob" else "FailedJobs"
    assert failure.value.reason == expected and failure.value.pod == worker
    assert "CUDA out of memory" in str(failure.value) and expected in str(failure.value)
    assert cluster.deleted == [name]


def test_the_log_of_a_restarted_container_is_its_previous_one():
    pods = rec.pods("PyTorchJob", "j", 3, failed=1, restarted=True)
    assert log_pod(pods, "pytorch") == ("j-worker-0", True)
    assert log_pod(rec.pods("PyTorchJob", "j", 3), "pytorch") == ("j-master-0", False)


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_jobs_own_deadline_ends_the_step_with_the_operators_reason(launcher):
    cluster = FakeCluster(rec.deadline(KINDS[launcher], spec().name, 4))
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher)
    assert failure.value.reason == "DeadlineExceeded" and "deadline" in str(failure.value).lower()
    assert "(no pod found)" in failure.value.logs and cluster.deleted == [spec().name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_followers_backstop_timeout_ends_a_job_that_never_ends(launcher):
    cluster, clock = FakeCluster(rec.running_forever(KINDS[launcher], spec().name, 4)), FakeClock()
    with pytest.raises(JobTimeout, match="not finished after 120s"):
        run(cluster, launcher, clock=clock, timeout=120)
    assert clock.now <= 120 + 15 and cluster.deleted == [spec().name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_job_deleted_under_us_ends_the_step(launcher):
    cluster = FakeCluster(rec.deleted(KINDS[launcher], spec().name, 4))
    with pytest.raises(JobDeleted, match="deleted before it finished"):
        run(cluster, launcher)
    assert cluster.polls == 3


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_pods_that_never_schedule_time_out_naming_the_schedulers_reason(launcher):
    cluster, clock = FakeCluster(rec.unschedulable(KINDS[launcher], spec().name, 4)), FakeClock()
    with pytest.raises(JobUnschedulable) as waited:
        run(cluster, launcher, clock=clock, schedule_timeout=600)
    message = str(waited.value)
    assert "0 of 4 pods scheduled" in message and "Unschedulable" in message
    assert "4 Insufficient nvidia.com/gpu" in waited.value.pending_reason
    assert 600 < clock.now <= 600 + 15 and cluster.deleted == [spec().name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_job_kueue_never_admits_times_out_naming_kueues_reason(launcher):
    uid = "6f1c2e8a-0b7d-4a51-9c1e-2d4f8b7a9e10"  # the fake API server's uid for the job
    cluster = FakeCluster(rec.queued_by_kueue(KINDS[launcher], spec().name, 4, uid))
    with pytest.raises(JobUnschedulable) as waited:
        run(cluster, launcher, queue_name="team-gpus")
    assert "insufficient unused quota for nvidia.com/gpu in flavor h100" in str(waited.value)
    assert waited.value.pending_reason.startswith("Kueue workload")
    assert cluster.created[0]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_cancelling_the_step_deletes_the_job_even_when_kept_otherwise(launcher):
    def sigterm_on_third_poll(poll):
        if poll == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what kfp does to the step's pod on a cancelled run

    cluster = FakeCluster(rec.running_forever(KINDS[launcher], spec().name, 4), on_poll=sigterm_on_third_poll)
    with pytest.raises(StepCancelled):
        run(cluster, launcher, cleanup=False)
    assert cluster.deleted == [spec().name] and cluster.polls == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_job_is_owned_by_the_steps_pod(launcher):
    owner = owner_from_env({"CLIPDPO_POD_NAME": "clipdpo-abc-train-123", "CLIPDPO_POD_UID": "1b2c-uid"})
    manifest = build_manifest(spec(owner=owner), launcher, KEY)
    k8s_checks.validate_crd_object(manifest)
    assert manifest["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "clipdpo-abc-train-123", "uid": "1b2c-uid", "controller": False,
         "blockOwnerDeletion": False}]
    assert owner_from_env({}) is None


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_restarted_step_reattaches_instead_of_creating_a_second_job(launcher):
    name = spec().name
    cluster = FakeCluster(rec.succeeded(KINDS[launcher], name, 4))
    follower(cluster).submit(build_manifest(spec(), launcher, KEY))  # the step's first pod, then it died
    outcome = run(cluster, launcher)
    assert outcome.reattached and len(cluster.created) == 1


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_foreign_job_with_the_same_name_is_not_adopted(launcher):
    cluster = FakeCluster()
    other = build_manifest(spec(), launcher, "someone else's run")
    cluster.jobs[("ml", other["metadata"]["name"])] = other
    with pytest.raises(JobConflict, match="another launch"):
        run(cluster, launcher, cleanup=False)


def test_an_unknown_launcher_is_a_clear_error():
    with pytest.raises(ValueError, match="launcher 'mpijob'"):
        build_manifest(spec(), "mpijob", KEY)


def test_kueue_reason_is_read_from_whichever_workload_version_is_served():
    from kubernetes.client import ApiException

    class OldKueue(FakeCluster):  # a Kueue that serves only v1beta1
        def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
            self.asked = getattr(self, "asked", []) + [version]
            if version != "v1beta1":
                raise ApiException(status=404, reason="Not Found")
            return super().list_namespaced_custom_object(group, version, namespace, plural, label_selector)

    cluster = OldKueue(rec.queued_by_kueue("TrainJob", spec().name, 2, "6f1c2e8a-0b7d-4a51-9c1e-2d4f8b7a9e10"))
    with pytest.raises(JobUnschedulable, match="16 more needed"):
        run(cluster, "trainjob", nodes=2, queue_name="team-gpus")
    assert cluster.asked == ["v1beta2", "v1beta1"]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_pipelines_train_step_launches_and_follows_the_job(launcher, monkeypatch, bucket):
    """steps.train_step as the kfp component calls it, down to the API calls (fake cluster, no sleeping)."""
    import functools

    from clipdpo import steps
    from clipdpo.cluster import launch as launch_module

    cluster = FakeCluster()
    monkeypatch.setattr(launch_module, "kubernetes_clients", lambda: (cluster, cluster))
    monkeypatch.setattr(launch_module, "JobFollower", functools.partial(JobFollower, poll_seconds=0))
    monkeypatch.setenv("CLIPDPO_POD_NAME", "clipdpo-run-train-pod")
    monkeypatch.setenv("CLIPDPO_POD_UID", "pod-uid-1")
    run_root, config = f"{bucket}/runs/r1", '{"beta": 0.1}'  # the step writes the job's config file there
    output = steps.artifact_uri(run_root, "train")
    name = jobspec.job_name(output + "\n" + '{"beta": 0.1}')
    cluster.frames = rec.succeeded(KINDS[launcher], name, 2)
    assert steps.train_step(run_root, config, launcher=launcher, image="ghcr.io/x/clipdpo-train:0.1.0", nodes=2,
                            gpus_per_node=4, queue_name="team-gpus") == output
    job = cluster.created[0]
    assert job["kind"] == KINDS[launcher] and job["metadata"]["name"] == name and cluster.deleted == [name]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "pod-uid-1"  # same namespace as the step's pod
    assert f"{run_root}/configs/train.json" in json.dumps(job)  # the job reads the config the step wrote
    with pytest.raises(ValueError, match="expected 'trainjob', 'pytorchjob' or 'local'"):
        steps.train_step(run_root, config, launcher="mpijob", image="ghcr.io/x/clipdpo-train:0.1.0")
