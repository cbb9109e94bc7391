"""The step that follows a training job ends when the job ends, every way it can end, for both
launchers (PyTorchJob, TrainJob): replayed recordings of the cluster (tests/job_recordings.py)
through a fake API at the client boundary, a fake clock, and a wall-clock alarm per test.

The replays of what a real cluster does to a run: a long wait in a Kueue queue (not stuck), the loss of
the launcher pod (the job survives, the retry re-attaches), pods that can never start (fail fast, with
kubelet's reason), and the evidence of a failed job (kept, its log streamed while it ran)."""

from __future__ import annotations

import json
import os
import signal

import job_recordings as rec
import k8s_checks
import pytest
from fake_k8s import FakeClock, FakeCluster

from clipdpo.cluster import jobspec
from clipdpo.cluster.follow import (
    FollowSettings,
    JobConflict,
    JobDeleted,
    JobFailed,
    JobFollower,
    JobLimits,
    JobTimeout,
    JobUnschedulable,
    StepCancelled,
    crash_threshold,
    log_pod,
)
from clipdpo.cluster.launch import build_manifest, launch

KINDS = {"pytorchjob": "PyTorchJob", "trainjob": "TrainJob"}
KEY = "run-1/s3://b/model"
WALL_SECONDS = 20  # each test replays a handful of polls: far below this on any machine


@pytest.fixture(autouse=True)
def wall_clock_limit():
    # what the pipeline's train step imports (torch among it) loads before the alarm: on a busy machine the
    # first import alone can take longer than the replay, and an alarm inside it leaves torch half-imported
    import clipdpo.steps  # noqa: F401
    import clipdpo.tracking  # noqa: F401
    import clipdpo.train.config  # noqa: F401

    def expired(signum, frame):
        raise TimeoutError(f"test still running after {WALL_SECONDS}s: the follower did not end")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(WALL_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def spec(**overrides) -> jobspec.TrainJobSpec:
    return k8s_checks.train_spec(**{"name": jobspec.job_name(KEY), "node_selector": {}, **overrides})


def follower(cluster, clock=None, **options) -> JobFollower:
    clock = clock or FakeClock()
    return JobFollower(
        cluster, cluster, settings=FollowSettings(poll_seconds=15), clock=clock, sleep=clock.sleep, **options
    )


def run(
    cluster,
    launcher,
    *,
    clock=None,
    timeout=3600.0,
    schedule_timeout=600.0,
    cleanup=True,
    limits=None,
    options=None,
    **spec_args,
):
    """launch() against the fake cluster; `limits`: the follower's other limits (admission, start-up), `options`:
    the follower's settings. Both are left out when not given, so a replay runs on code that lacks them."""
    return launch(
        spec(**spec_args),
        KEY,
        JobLimits(timeout_seconds=timeout, schedule_timeout_seconds=schedule_timeout, **(limits or {})),
        launcher=launcher,
        follower=follower(cluster, clock, **(options or {})),
        cleanup=cleanup,
    )


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
def test_a_failed_job_is_kept_with_its_reason_and_the_failed_pods_log(launcher):
    name = spec().name
    worker = rec.pods(KINDS[launcher], name, 4)[2]["metadata"]["name"]
    logs = {worker: "step 41 loss 0.61\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"}
    cluster = FakeCluster(rec.failed(KINDS[launcher], name, 4, failed_index=2), logs=logs)
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher)
    expected = "BackoffLimitExceeded" if launcher == "pytorchjob" else "FailedJobs"
    assert failure.value.reason == expected and failure.value.pod == worker
    assert "CUDA out of memory" in str(failure.value) and expected in str(failure.value)
    # evidence: the failed job stays (the operator keeps its failed pods; its TTL clears it), not deleted
    assert cluster.deleted == [] and ("ml", name) in cluster.jobs


def test_a_kept_pytorchjob_is_cleared_by_its_ttl():
    manifest = build_manifest(spec(), "pytorchjob", KEY)
    k8s_checks.validate_crd_object(manifest)
    assert manifest["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 3 * 24 * 3600  # days to look, not an hour


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
    assert "(no pod found)" in failure.value.logs and cluster.deleted == []


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_followers_backstop_timeout_ends_a_job_that_never_ends(launcher):
    cluster, clock = FakeCluster(rec.running_forever(KINDS[launcher], spec().name, 4)), FakeClock()
    with pytest.raises(JobTimeout, match="not finished 120s after admission"):
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


# --- Queued is not stuck -------------------------------------------------------------------------------------

UID = "6f1c2e8a-0b7d-4a51-9c1e-2d4f8b7a9e10"  # the fake API server's uid for the job


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_long_wait_in_the_kueue_queue_is_not_a_failure(launcher, monkeypatch, bucket):
    """The pipeline's train step, 5 h suspended in a Kueue queue (a busy GPU cluster), then admitted: it waits
    and follows the job to success; no limit of the step counts the queue."""
    import functools

    from clipdpo import steps
    from clipdpo.cluster import launch as launch_module

    clock = FakeClock()
    cluster = FakeCluster()
    monkeypatch.setattr(launch_module, "kubernetes_clients", lambda: (cluster, cluster))
    monkeypatch.setattr(
        launch_module,
        "JobFollower",
        functools.partial(JobFollower, settings=FollowSettings(poll_seconds=15), clock=clock, sleep=clock.sleep),
    )
    run_root = f"{bucket}/runs/r1"
    name = jobspec.job_name(steps.artifact_uri(run_root, "train") + "\n" + "{}")
    cluster.frames = rec.admitted_after_queue(KINDS[launcher], name, 2, UID, queued_polls=5 * 3600 // 15)
    assert steps.train_step(
        run_root,
        "{}",
        launcher=launcher,
        image="ghcr.io/x/clipdpo-train:0.1.0",
        nodes=2,
        gpus_per_node=4,
        queue_name="team-gpus",
    ) == steps.artifact_uri(run_root, "train")
    assert clock.now >= 5 * 3600 and len(cluster.created) == 1 and cluster.deleted == [name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_an_admission_timeout_ends_the_step_but_leaves_the_job_in_its_queue(launcher):
    cluster, clock = FakeCluster(rec.queued_by_kueue(KINDS[launcher], spec().name, 4, UID)), FakeClock()
    with pytest.raises(JobUnschedulable) as waited:
        run(cluster, launcher, clock=clock, queue_name="team-gpus", limits={"admission_timeout_seconds": 1800})
    assert "insufficient unused quota for nvidia.com/gpu in flavor h100" in str(waited.value)
    assert waited.value.pending_reason.startswith("Kueue workload") and 1800 < clock.now <= 1800 + 15
    assert cluster.deleted == [] and ("ml", spec().name) in cluster.jobs  # it keeps its place in the queue
    assert cluster.created[0]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_limits_count_from_admission(launcher):
    """An hour queued, then a schedule limit of 10 min and a backstop of 20 min: both from admission."""
    name = spec().name
    frames = rec.admitted_after_queue(KINDS[launcher], name, 4, UID, queued_polls=3600 // 15)
    cluster, clock = FakeCluster(frames[:-1] + rec.running_forever(KINDS[launcher], name, 4)), FakeClock()
    with pytest.raises(JobTimeout, match="not finished 1200s after admission"):
        run(cluster, launcher, clock=clock, timeout=1200, schedule_timeout=600, queue_name="team-gpus")
    assert 3600 + 1200 < clock.now <= 3600 + 1200 + 30


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_job_kueue_preempts_waits_again_without_a_clock_running(launcher):
    """Admitted and running 10 min, preempted back into the queue for 2 h, admitted again, succeeds: the 20 min
    backstop counts each admission afresh."""
    name = spec().name
    admitted = rec.admitted_after_queue(KINDS[launcher], name, 4, UID, queued_polls=1)
    running = rec.running_forever(KINDS[launcher], name, 4) * 40
    queued = rec.queued_by_kueue(KINDS[launcher], name, 4, UID) * (2 * 3600 // 15)
    cluster, clock = FakeCluster(admitted[:2] + running + queued + admitted[1:]), FakeClock()
    outcome = run(cluster, launcher, clock=clock, timeout=1200, queue_name="team-gpus")
    assert outcome.state == "Succeeded" and clock.now > 2 * 3600 + 600 and cluster.deleted == [name]


def test_kueue_reason_is_read_from_whichever_workload_version_is_served():
    from kubernetes.client import ApiException

    class OldKueue(FakeCluster):  # a Kueue that serves only v1beta1
        def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
            self.asked = getattr(self, "asked", []) + [version]
            if version != "v1beta1":
                raise ApiException(status=404, reason="Not Found")
            return super().list_namespaced_custom_object(group, version, namespace, plural, label_selector)

    cluster = OldKueue(rec.queued_by_kueue("TrainJob", spec().name, 2, UID))
    with pytest.raises(JobUnschedulable, match="16 more needed"):
        run(cluster, "trainjob", nodes=2, queue_name="team-gpus", limits={"admission_timeout_seconds": 600})
    assert cluster.asked == ["v1beta2", "v1beta1"]


# --- The job survives the loss of its launcher pod --------------------------------------------------------------


def step_pod(name: str, disrupted: bool) -> dict:
    """The pipeline step's pod; an eviction (drain, autoscaler, preemption) marks it DisruptionTarget first."""
    conditions = [{"type": "Ready", "status": "True"}]
    if disrupted:
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": name + "-uid"},
        "spec": {"containers": [{"name": "main", "image": "ghcr.io/x/clipdpo-train:0.1.0"}]},
        "status": {"phase": "Running", "conditions": conditions},
    }


def sigterm_on(poll_number):
    def deliver(poll):
        if poll == poll_number:
            os.kill(os.getpid(), signal.SIGTERM)  # kubelet stopping the step's pod

    return deliver


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_an_evicted_launcher_leaves_the_job_running_and_the_retry_reattaches(launcher, monkeypatch, bucket):
    """The pipeline's train step: its pod is evicted (node drain) 3 polls in, then garbage-collected; the job
    runs on, and the step's retry (a new pod of the same run) follows it to the end instead of starting another."""
    import functools

    from clipdpo import steps
    from clipdpo.cluster import launch as launch_module

    clock = FakeClock()
    cluster = FakeCluster(step_pods={"train-pod-1": step_pod("train-pod-1", disrupted=True)}, on_poll=sigterm_on(3))
    monkeypatch.setattr(launch_module, "kubernetes_clients", lambda: (cluster, cluster))
    monkeypatch.setattr(
        launch_module,
        "JobFollower",
        functools.partial(JobFollower, settings=FollowSettings(poll_seconds=15), clock=clock, sleep=clock.sleep),
    )
    monkeypatch.setenv("CLIPDPO_RUN", "clipdpo-7x2kq")
    monkeypatch.setenv("CLIPDPO_POD_NAME", "train-pod-1")
    monkeypatch.setenv("CLIPDPO_POD_UID", "train-pod-1-uid")  # what the step passed before (an owner's uid)
    run_root = f"{bucket}/runs/r1"
    args = dict(launcher=launcher, image="ghcr.io/x/clipdpo-train:0.1.0", nodes=2, gpus_per_node=4)
    name = jobspec.job_name(steps.artifact_uri(run_root, "train") + "\n{}\nrun=clipdpo-7x2kq")
    cluster.frames = rec.running_forever(KINDS[launcher], name, 2) * 4 + rec.succeeded(KINDS[launcher], name, 2)
    with pytest.raises(StepCancelled):
        steps.train_step(run_root, "{}", **args)
    cluster.delete_pod("train-pod-1")  # the evicted pod is gone: whatever it owned goes with it
    assert cluster.garbage_collected == [] and cluster.deleted == []  # the job runs on without its launcher
    (job,) = cluster.created
    assert "ownerReferences" not in job["metadata"] and job["metadata"]["name"] == name
    assert job["metadata"]["labels"][jobspec.RUN_LABEL] == "clipdpo-7x2kq"

    cluster.on_poll = None  # the retry: another pod of the same run
    cluster.step_pods["train-pod-2"] = step_pod("train-pod-2", disrupted=False)
    monkeypatch.setenv("CLIPDPO_POD_NAME", "train-pod-2")
    monkeypatch.setenv("CLIPDPO_POD_UID", "train-pod-2-uid")
    assert steps.train_step(run_root, "{}", **args) == steps.artifact_uri(run_root, "train")
    assert len(cluster.created) == 1 and cluster.deleted == [job["metadata"]["name"]]


def test_another_run_over_the_same_run_root_starts_its_own_job():
    from clipdpo.cluster.launch import run_launch_key

    names = {jobspec.job_name(run_launch_key(KEY, run)) for run in ("clipdpo-a1", "clipdpo-b2")}
    assert len(names) == 2 and all(name.startswith("clipdpo-train-") for name in names)
    assert run_launch_key(KEY, "") == KEY  # outside a pipeline: the key as given


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_cancelled_run_deletes_the_job_even_when_kept_otherwise(launcher):
    """SIGTERM to a launcher pod that is not being evicted: the run was cancelled."""
    cluster = FakeCluster(
        rec.running_forever(KINDS[launcher], spec().name, 4),
        on_poll=sigterm_on(3),
        step_pods={"train-pod-1": step_pod("train-pod-1", disrupted=False)},
    )
    before = signal.getsignal(signal.SIGTERM)  # another test in this process may have set one
    with pytest.raises(StepCancelled):
        run(cluster, launcher, cleanup=False, options={"launcher_pod": ("default", "train-pod-1")})
    assert cluster.deleted == [spec().name] and cluster.polls == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the follower's handler is gone again


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_sigterm_outside_a_pipeline_step_deletes_the_job(launcher):
    cluster = FakeCluster(rec.running_forever(KINDS[launcher], spec().name, 4), on_poll=sigterm_on(2))
    with pytest.raises(StepCancelled):
        run(cluster, launcher)
    assert cluster.deleted == [spec().name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_runs_exit_handler_deletes_its_unfinished_jobs_only(launcher, monkeypatch):
    from clipdpo import steps
    from clipdpo.cluster import launch as launch_module

    cluster = FakeCluster()
    jobs = {}
    for run_name, key, state in (
        ("clipdpo-7x2kq", "a", "running"),
        ("clipdpo-7x2kq", "b", "failed"),
        ("clipdpo-other", "c", "running"),
    ):
        manifest = build_manifest(spec(name=jobspec.job_name(key), namespace="default"), launcher, key, run_name)
        frames = (
            rec.running_forever
            if state == "running"
            else lambda kind, job, nodes: rec.failed(kind, job, nodes, failed_index=1)[-1:]
        )(KINDS[launcher], "j", 4)
        manifest["status"] = frames[-1]["status"]
        cluster.jobs[("default", manifest["metadata"]["name"])] = manifest
        jobs[key] = manifest["metadata"]["name"]
    monkeypatch.setattr(launch_module, "kubernetes_clients", lambda: (cluster, cluster))
    monkeypatch.setenv("CLIPDPO_RUN", "clipdpo-7x2kq")
    assert steps.cleanup_train_jobs_step(launcher) == [jobs["a"]]
    assert cluster.deleted == [jobs["a"]] and set(cluster.jobs) == {("default", jobs["b"]), ("default", jobs["c"])}
    assert steps.cleanup_train_jobs_step("local") == []


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


# --- Pods that can never start fail the step at once, with kubelet's reason ------------------------------------


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_an_image_that_cannot_be_pulled_fails_fast_with_kubelets_reason(launcher):
    name = spec().name
    waits = [rec.CONTAINER_CREATING] + [rec.ERR_IMAGE_PULL, rec.IMAGE_PULL_BACKOFF] * 3
    cluster, clock = FakeCluster(rec.cannot_start(KINDS[launcher], name, 4, waits)), FakeClock()
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher, clock=clock)
    assert failure.value.reason in ("ErrImagePull", "ImagePullBackOff")
    assert "ghcr.io/x/clipdpo-train:0.1.0: not found" in str(failure.value)
    assert failure.value.pod == rec.pods(KINDS[launcher], name, 4)[0]["metadata"]["name"]
    # the pull failing for the grace (2 min, kubelet retrying), not the 1 h the test allows, and the GPUs freed
    assert 120 <= clock.now <= 120 + 2 * 15 and cluster.deleted == [name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_missing_secret_fails_fast_naming_it(launcher):
    cluster, clock = FakeCluster(rec.cannot_start(KINDS[launcher], spec().name, 4, [rec.MISSING_SECRET])), FakeClock()
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher, clock=clock)
    assert failure.value.reason == "CreateContainerConfigError"
    assert 'secret "clipdpo-s3" not found' in str(failure.value)
    assert clock.now <= 120 + 15 and cluster.deleted == [spec().name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_crash_loop_fails_fast_with_the_crashed_containers_log(launcher):
    name = spec().name
    rank0 = rec.pods(KINDS[launcher], name, 4)[0]["metadata"]["name"]
    crashes = rec.cannot_start(KINDS[launcher], name, 4, [rec.crash_loop("p")], restarts=3)
    logs = {rank0: "Traceback (most recent call last):\nKeyError: 'AWS_ACCESS_KEY_ID'\n"}
    cluster, clock = FakeCluster(rec.running_forever(KINDS[launcher], name, 4) * 2 + crashes, logs=logs), FakeClock()
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher, clock=clock)
    assert failure.value.reason == "CrashLoopBackOff" and "3 restarts" in str(failure.value)
    assert "KeyError: 'AWS_ACCESS_KEY_ID'" in failure.value.logs and failure.value.pod == rank0
    assert {"pod": rank0, "previous": True}.items() <= cluster.log_requests[-1].items()
    assert cluster.polls == 3 and cluster.deleted == [name]


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_a_restart_the_policy_cures_is_not_a_crash_loop(launcher):
    name = spec().name
    frames = rec.cannot_start(KINDS[launcher], name, 4, [rec.crash_loop("p")], restarts=1) * 3 + rec.succeeded(
        KINDS[launcher], name, 4
    )
    assert run(FakeCluster(frames), launcher).state == "Succeeded"


@pytest.mark.parametrize(
    "launcher, backoff_limit, threshold",
    [
        ("pytorchjob", 0, 3),  # never fewer than 3: the operator ends a job with no restarts itself
        ("pytorchjob", 3, 3),
        ("pytorchjob", 5, 5),  # a job allowed 5 restarts is not failed at its 3rd
        ("trainjob", 5, 3),  # its restarts are the runtime's (the project runtime recreates pods, none restart)
    ],
)
def test_a_crash_loop_fails_the_step_only_past_the_restarts_the_job_allows(launcher, backoff_limit, threshold):
    """One restart short of max(3, the restarts the job survives) the step keeps following, and the job that
    recovers succeeds; at it, the step fails with the crash loop."""
    name = spec().name

    def crashing(restarts: int) -> list:
        return rec.cannot_start(KINDS[launcher], name, 4, [rec.crash_loop("p")], restarts=restarts)

    below = crashing(threshold - 1) * 3 + rec.succeeded(KINDS[launcher], name, 4)
    assert run(FakeCluster(below), launcher, backoff_limit=backoff_limit).state == "Succeeded"
    cluster = FakeCluster(crashing(threshold))
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher, backoff_limit=backoff_limit)
    assert failure.value.reason == "CrashLoopBackOff" and f"{threshold} restarts" in str(failure.value)
    assert cluster.polls == 1 and cluster.deleted == [name]


def test_the_crash_threshold_is_the_jobs_restarts_and_never_below_three():
    assert [crash_threshold(allowed) for allowed in range(6)] == [3, 3, 3, 3, 4, 5]
    assert crash_threshold(1, floor=1) == 1


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_containers_that_never_start_end_at_the_startup_deadline(launcher):
    name = spec().name
    cluster, clock = FakeCluster(rec.cannot_start(KINDS[launcher], name, 4, [rec.CONTAINER_CREATING])), FakeClock()
    with pytest.raises(JobFailed) as failure:
        run(cluster, launcher, clock=clock, limits={"startup_timeout_seconds": 900})
    assert failure.value.reason == "StartupDeadlineExceeded" and "ContainerCreating" in str(failure.value)
    assert 900 < clock.now <= 900 + 15 and cluster.deleted == [name]


# --- Rank 0's log streams to the step's log while the job runs ---------------------------------------------------


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_rank0_log_streams_once_each_line_in_order(launcher):
    name = spec().name
    rank0 = rec.pods(KINDS[launcher], name, 4)[0]["metadata"]["name"]
    worker = rec.pods(KINDS[launcher], name, 4)[1]["metadata"]["name"]
    # every 7 s; two lines on one timestamp, the last ones of a read (the next read sees them again); stamps whose
    # fractions kubelet prints unpadded (.5 vs .52); polls at 0, 15, ..., 90 s, each read reaching 30 s further back
    lines = [(7.0 * i, f"step {i} loss {0.7 - i / 100:.2f}") for i in range(12)]
    lines += [(74.0, "eval a"), (74.0, "eval b"), (80.5, "save 1"), (80.52, "save 2")]
    lines.sort(key=lambda item: item[0])
    frames = rec.running_forever(KINDS[launcher], name, 4) * 6 + rec.succeeded(KINDS[launcher], name, 4)[-1:]
    clock, printed = FakeClock(), []
    cluster = FakeCluster(frames, log_lines={rank0: lines, worker: [(1.0, "worker noise")]}, clock=clock)
    run(cluster, launcher, clock=clock, options={"log_sink": printed.append})
    assert printed == [f"[{rank0}] {line}" for _, line in lines]
    reads = [r for r in cluster.log_requests if r["timestamps"]]
    assert reads[0]["tail_lines"] == 200 and all(r["pod"] == rank0 for r in reads)
    assert all(r["since_seconds"] is not None and r["since_seconds"] <= 15 + 30 for r in reads[1:])
    assert len(reads) >= 5  # a read per poll while it ran, not one at the end


@pytest.mark.parametrize("launcher", sorted(KINDS))
def test_the_pipelines_train_step_launches_and_follows_the_job(launcher, monkeypatch, bucket):
    """steps.train_step as the kfp component calls it, down to the API calls (fake cluster, no sleeping)."""
    import functools

    from clipdpo import steps
    from clipdpo.cluster import launch as launch_module

    cluster = FakeCluster()
    monkeypatch.setattr(launch_module, "kubernetes_clients", lambda: (cluster, cluster))
    monkeypatch.setattr(
        launch_module, "JobFollower", functools.partial(JobFollower, settings=FollowSettings(poll_seconds=0))
    )
    monkeypatch.setenv("CLIPDPO_RUN", "clipdpo-run-1")
    run_root, config = f"{bucket}/runs/r1", '{"beta": 0.1}'  # the step writes the job's config file there
    output = steps.artifact_uri(run_root, "train")
    name = jobspec.job_name(output + "\n" + '{"beta": 0.1}' + "\nrun=clipdpo-run-1")
    cluster.frames = rec.succeeded(KINDS[launcher], name, 2)
    assert (
        steps.train_step(
            run_root,
            config,
            launcher=launcher,
            image="ghcr.io/x/clipdpo-train:0.1.0",
            nodes=2,
            gpus_per_node=4,
            queue_name="team-gpus",
        )
        == output
    )
    job = cluster.created[0]
    assert job["kind"] == KINDS[launcher] and job["metadata"]["name"] == name and cluster.deleted == [name]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    assert job["metadata"]["labels"][jobspec.RUN_LABEL] == "clipdpo-run-1" and "ownerReferences" not in job["metadata"]
    assert f"{run_root}/configs/train.json" in json.dumps(job)  # the job reads the config the step wrote
    with pytest.raises(ValueError, match="expected 'trainjob', 'pytorchjob' or 'local'"):
        steps.train_step(run_root, config, launcher="mpijob", image="ghcr.io/x/clipdpo-train:0.1.0")
