"""A training job survives a failed pod by default: the PyTorchJob restarts its containers within a budget
that the operator's way of counting does not exhaust at the first failure, the TrainJob's default runtime
recreates its JobSet as often, every training container tears itself down when a collective fails or hangs (so
that a restart happens at all), and the process group waits long enough for a node's checkpoint transfer. The
manifests are checked against the real CRDs; a killed run resuming to the uninterrupted result is tested by
test_train_e2e.py."""

from __future__ import annotations

import datetime

import job_recordings as rec
import k8s_checks
import pytest
from fake_k8s import FakeClock, FakeCluster
from k8s_checks import train_spec as spec

from clipdpo.cluster import pytorchjob, trainjob
from clipdpo.cluster.follow import JobFollower
from clipdpo.cluster.launch import launch
from clipdpo.train import dist
from clipdpo.train.config import TrainConfig

TEARDOWN = {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "3"}


def operator_fails_job(backoff_limit: int, restarts_per_pod: list[int]) -> bool:
    """The Training Operator's PastBackoffLimit (release 1.9, pkg/core/job.go): the restart counts of the
    containers of every running pod, added up, against runPolicy.backoffLimit."""
    total = sum(restarts_per_pod)
    return total > 0 if backoff_limit == 0 else total >= backoff_limit


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_a_pytorchjob_survives_its_failures_as_the_operator_counts_them(nodes):
    """Static rendezvous: a failure restarts the container of every node (the others end at their next
    collective), so each failure adds `nodes` to the operator's sum."""
    job = pytorchjob.build(spec(nodes=nodes, backoff_limit=3))
    k8s_checks.validate_pytorchjob(job)
    limit = job["spec"]["runPolicy"]["backoffLimit"]
    assert {r["restartPolicy"] for r in job["spec"]["pytorchReplicaSpecs"].values()} == {"OnFailure"}
    assert not operator_fails_job(limit, [3] * nodes)  # three failures survived
    assert operator_fails_job(limit, [4] * nodes)  # the fourth ends the job
    no_restarts = pytorchjob.build(spec(nodes=nodes, backoff_limit=0))["spec"]["runPolicy"]["backoffLimit"]
    assert operator_fails_job(no_restarts, [1] + [0] * (nodes - 1))


def training_envs(job: dict) -> list[list[dict]]:
    """The environment of each training container the job's pods run (a TrainJob's: merged into its runtime)."""
    if job["kind"] == trainjob.KIND:
        k8s_checks.validate_trainjob(job)
        pod = k8s_checks.trainjob_pod_template(job)["spec"]
        return [c["env"] for c in pod["containers"] if c["name"] == trainjob.CONTAINER_NAME]
    k8s_checks.validate_pytorchjob(job)
    return [r["template"]["spec"]["containers"][0]["env"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


@pytest.mark.parametrize("builder", [pytorchjob.build, trainjob.build])
def test_every_training_container_tears_down_on_a_failed_collective(builder):
    envs = training_envs(builder(spec()))
    assert envs and all(TEARDOWN in env for env in envs)
    for env in training_envs(builder(spec(env={"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}))):  # the launch's own wins
        names = [e["name"] for e in env]
        assert len(names) == len(set(names)) and {"name": TEARDOWN["name"], "value": "1"} in env


def jobset_fails_job(max_restarts: int, failures: int) -> bool:
    """The project runtime's JobSet: each pod failure fails its Job (backoffLimit 0), and JobSet restarts the set
    until failurePolicy.maxRestarts restarts are spent (jobset pkg/controllers/failure_policy.go: it fails the
    set when a Job fails once its restarts have reached maxRestarts)."""
    return failures > max_restarts


def test_a_trainjob_restarts_by_default_as_often_as_a_pytorchjob_does():
    """The default TrainJob names the project runtime, which helm (by default) and k8s/ install where the job is
    created; its JobSet survives as many failures as a default PyTorchJob does, on any number of nodes."""
    from test_k8s_manifests import ROOT, SECRET_VALUES, kustomize, render_chart

    job = trainjob.build(spec())
    ref = job["spec"]["runtimeRef"]
    installed = [o for o in render_chart(SECRET_VALUES, "team-a") if o["kind"] == ref["kind"]]
    installed += [o for o in kustomize(f"{ROOT}/k8s/overlays/profile") if o["kind"] == ref["kind"]]
    assert [(o["metadata"]["name"], o["metadata"]["namespace"]) for o in installed] == [(ref["name"], "team-a")] * 2
    for runtime in installed:
        k8s_checks.validate_training_runtime(runtime)
        k8s_checks.validate_trainjob(job, runtime)
        jobset = runtime["spec"]["template"]["spec"]
        assert jobset["replicatedJobs"][0]["template"]["spec"]["backoffLimit"] == 0  # a failure is a JobSet restart
        for nodes in (1, 2, 4):
            limit = pytorchjob.build(spec(nodes=nodes))["spec"]["runPolicy"]["backoffLimit"]
            for failures in range(6):
                assert jobset_fails_job(jobset["failurePolicy"]["maxRestarts"], failures) == operator_fails_job(
                    limit, [failures] * nodes
                ), (nodes, failures)
    assert TEARDOWN in job["spec"]["trainer"]["env"]


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_the_follower_reads_back_the_failures_a_pytorchjob_survives(nodes):
    for backoff_limit in range(6):
        job = pytorchjob.build(spec(nodes=nodes, backoff_limit=backoff_limit))
        assert pytorchjob.failures_survived(job) == backoff_limit


def test_the_process_group_waits_the_configured_collective_timeout(monkeypatch):
    seen = {}
    monkeypatch.setattr(dist.torch_dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.torch_dist, "init_process_group", lambda backend, timeout=None: seen.update(t=timeout))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    dist.init(TrainConfig().collective_timeout_minutes)
    assert seen["t"] == datetime.timedelta(minutes=60)  # longer than PyTorch's 10-minute NCCL default
    dist.init(None)
    assert seen["t"] is None  # PyTorch's default


def test_the_training_run_passes_its_configs_collective_timeout(monkeypatch):
    from clipdpo.train import recipe

    class Stop(Exception):
        pass

    def init(timeout_minutes=None):
        raise Stop(timeout_minutes)

    monkeypatch.setattr(recipe.dist, "init", init)
    with pytest.raises(Stop) as stopped:
        recipe.run(TrainConfig(collective_timeout_minutes=25), "s3://b/pairs", "s3://b/model", storage=object())
    assert stopped.value.args == (25,)


@pytest.mark.parametrize(
    "runtime, warned",
    [
        ("torch-distributed", True),
        ("ClusterTrainingRuntime/torch-distributed", True),
        ("TrainingRuntime/clipdpo-torch", False),
    ],
)
def test_a_trainjob_on_the_stock_runtime_says_it_will_not_restart(runtime, warned, caplog):
    job = spec(runtime=runtime)
    cluster, clock = FakeCluster(rec.succeeded("TrainJob", job.name, job.nodes)), FakeClock()
    follower = JobFollower(cluster, cluster, poll_seconds=15, clock=clock, sleep=clock.sleep)
    assert launch(job, "key", launcher="trainjob", timeout_seconds=3600, follower=follower).state == "Succeeded"
    assert ("has no failurePolicy: the job fails once" in caplog.text) == warned
