"""A training job survives a failed pod by default: the PyTorchJob restarts its containers within a budget
that the operator's way of counting does not exhaust at the first failure, the TrainJob's default runtime
recreates its JobSet as often, every training container tears itself down when a collective fails or hangs (so
that a restart happens at all), the process group waits long enough for a node's checkpoint transfer, and a
restarted pod's arguments resume from the checkpoint its lost run left on S3. The manifests are checked against
the real CRDs; a killed run resuming to the uninterrupted result is tested by test_train_e2e.py (one node) and
tests/multinode/ (two torchrun nodes, one lost: `make test-multinode`)."""

from __future__ import annotations

import datetime
import os

import job_recordings as rec
import k8s_checks
import pytest
from fake_k8s import FakeClock, FakeCluster
from k8s_checks import train_spec as spec

from clipdpo.cluster import pytorchjob, trainjob
from clipdpo.cluster.follow import FollowSettings, JobFollower, JobLimits
from clipdpo.cluster.launch import launch
from clipdpo.storage import Storage
from clipdpo.train import checkpoint, dist
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
    follower = JobFollower(cluster, cluster, settings=FollowSettings(poll_seconds=15), clock=clock, sleep=clock.sleep)
    assert (
        launch(job, "key", JobLimits(timeout_seconds=3600), launcher="trainjob", follower=follower).state == "Succeeded"
    )
    assert ("has no failurePolicy: the job fails once" in caplog.text) == warned


class PartsBackend:
    """What Checkpoints.save and restore see of a backend: each rank writes its own part (a ZeRO partition, its
    RNG state); `load` records what a restore gave it."""

    def __init__(self, ctx: dist.DistContext, step: int = 0):
        self.ctx, self.step, self.loaded = ctx, step, {}

    def save(self, local_dir: str) -> None:
        with open(os.path.join(local_dir, f"part-rank{self.ctx.rank}"), "w") as out:
            out.write(f"rank {self.ctx.rank} step {self.step}")

    def load(self, local_dir: str) -> None:
        self.loaded = {name: open(os.path.join(local_dir, name)).read() for name in sorted(os.listdir(local_dir))}


def node_checkpoints(output: str, scratch: str, node: int) -> checkpoint.Checkpoints:
    """Node `node` of a two-node job (one process each), its scratch an emptyDir of its pod."""
    ctx = dist.DistContext(rank=node, world_size=2, local_rank=0, device=dist.torch.device("cpu"))
    return checkpoint.Checkpoints(ctx, Storage(), output, scratch, keep=3)


def test_a_restarted_pod_resumes_from_the_s3_checkpoint_its_lost_run_left(bucket, tmp_path, monkeypatch):
    """The wiring of a resume after a lost node, in one process (tests/multinode/ runs it with two torchrun nodes):
    the train step gives every pod of its job the same arguments, --overwrite among them; a new pod (empty scratch)
    started with them keeps its own run's checkpoints and restores the newest complete one from S3 with every
    node's part, passing over the one the lost run left unmarked. The two nodes' collectives run in turn here."""
    from clipdpo import steps
    from clipdpo.stage import build_parser
    from clipdpo.train import recipe

    sent = {}  # rank 0 runs each collective first here: what it broadcast is what the other rank receives

    def broadcast_object(ctx: dist.DistContext, item):
        if ctx.is_main:
            sent["item"] = item
        return sent["item"]

    monkeypatch.setattr(dist, "barrier", lambda ctx: None)
    monkeypatch.setattr(dist, "broadcast_object", broadcast_object)
    launches = []
    monkeypatch.setattr(steps, "launch_train_job", lambda args, key, launcher, job: launches.append((args, key)))
    run_root = f"{bucket}/runs/r1"
    for _attempt in range(2):  # a retried step: the same job (launch key), the same command
        steps.train_step(run_root, '{"save_steps": 2}', launcher="trainjob", image="ghcr.io/x/clipdpo-train:0.1.0")
    assert launches[0] == launches[1]
    args = build_parser("python -m clipdpo.train", None, "pairs", sharded=False).parse_args(launches[0][0])
    assert args.overwrite and args.output == f"{run_root}/model"

    lost = [node_checkpoints(args.output, str(tmp_path / f"lost-node{n}"), n) for n in (0, 1)]
    for step in (2, 4):  # node 1 uploads its part, then rank 0 marks the checkpoint complete
        for node in (1, 0):
            lost[node].save(PartsBackend(lost[node].ctx, step), step, {"fingerprint": "this-run"})
    lost[1].save(PartsBackend(lost[1].ctx, 6), 6, {"fingerprint": "this-run"})  # node 0 died before marking it
    storage = Storage()
    assert recipe.prepare_output(lost[0].ctx, storage, args.output, "this-run", args.overwrite) is None
    assert checkpoint.complete_steps(storage, args.output) == [2, 4]  # --overwrite kept this run's own

    for node in (0, 1):  # rank 0 first: it lists the checkpoints and broadcasts the steps
        fresh = node_checkpoints(args.output, str(tmp_path / f"new-node{node}"), node)
        backend = PartsBackend(fresh.ctx)
        assert fresh.restore(backend)["step"] == 4
        parts = {name: text for name, text in backend.loaded.items() if name != checkpoint.MARKER}
        assert parts == {"part-rank0": "rank 0 step 4", "part-rank1": "rank 1 step 4"}  # node 0's part too
    # the same arguments under another config (another fingerprint) start afresh instead
    assert recipe.prepare_output(lost[0].ctx, storage, args.output, "other-config", args.overwrite) is None
    assert checkpoint.complete_steps(storage, args.output) == []
