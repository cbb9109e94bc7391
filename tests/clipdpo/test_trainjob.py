"""The Kubeflow Trainer v2 TrainJob builder and the project ClusterTrainingRuntime: valid against
the real CRDs (with the pod they make validated as a core PodTemplate), and the torchrun contract:
the command a TrainJob runs picks its rendezvous up from the PET_* variables the torch runtime
injects, and the train entry point's process-group set-up sees the world torchrun made."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import k8s_checks
import pytest
from k8s_checks import train_spec as spec

from clipdpo.cluster import trainjob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_trainjob_is_valid_and_says_what_the_runtime_needs():
    job = trainjob.build(spec(queue_name="team-gpus", active_deadline_seconds=7200))
    k8s_checks.validate_trainjob(job)
    assert job["spec"]["runtimeRef"] == {  # the project's namespaced runtime (helm and k8s/ install it)
        "name": "clipdpo-torch",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "-m", "clipdpo.train"]  # no --nnodes etc.: PET_* decide
    assert trainer["args"] == ["--input", "s3://b/pairs", "--output", "s3://b/model"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
    assert secrets["AWS_ACCESS_KEY_ID"] == {"name": "clipdpo-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert secrets["AWS_ENDPOINT_URL"]["optional"] is True
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]["spec"]
    assert patch["name"] == "node" and pod["containers"][0]["name"] == "node"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["serviceAccountName"] == "clipdpo-train"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]


def test_the_project_runtime_is_the_stock_torch_one_where_a_trainjob_looks():
    stock = k8s_checks.stock_runtimes()["torch-distributed"]
    project = trainjob.build_runtime("clipdpo-torch", "ghcr.io/x/clipdpo-train:0.1.0")
    for runtime in (stock, project):  # the same torch plugin (PET_* injected) and the same node job and container
        assert "torch" in runtime["spec"]["mlPolicy"] and "mpi" not in runtime["spec"]["mlPolicy"]
        containers = k8s_checks._node_template(runtime, trainjob.NODE_JOB)["spec"]["containers"]
        assert [c["name"] for c in containers] == [trainjob.CONTAINER_NAME]
    assert project["kind"] == "TrainingRuntime" and "namespace" not in project["metadata"]  # installed per namespace


@pytest.mark.parametrize(
    "runtime, ref",
    [
        ("torch-distributed", ("ClusterTrainingRuntime", "torch-distributed")),  # runtimeRef.kind's default
        ("ClusterTrainingRuntime/clipdpo-torch", ("ClusterTrainingRuntime", "clipdpo-torch")),
        ("TrainingRuntime/team.runtime", ("TrainingRuntime", "team.runtime")),
    ],
)
def test_a_runtime_is_named_kind_slash_name_or_by_a_cluster_runtimes_name(runtime, ref):
    job = trainjob.build(spec(runtime=runtime))
    assert (job["spec"]["runtimeRef"]["kind"], job["spec"]["runtimeRef"]["name"]) == ref
    k8s_checks.validate_crd_object(job)


@pytest.mark.parametrize("runtime", ["Runtime/clipdpo-torch", "TrainingRuntime/", "torch_distributed", ""])
def test_a_bad_runtime_is_refused_when_the_job_is_described(runtime):
    with pytest.raises(ValueError, match="expected <name> .* or <kind>/<name>"):
        spec(runtime=runtime)


def test_gang_is_refused_with_a_pointer_to_what_works():
    with pytest.raises(ValueError, match="podGroupPolicy or by Kueue"):
        trainjob.build(spec(gang=True))


@pytest.mark.parametrize("kind", ["TrainingRuntime", "ClusterTrainingRuntime"])
def test_project_runtime_is_valid_and_adds_restarts_and_coscheduling(kind):
    runtime = trainjob.build_runtime(
        "clipdpo-torch", "ghcr.io/x/clipdpo-train:0.1.0", kind=kind, max_restarts=3, gang_timeout_seconds=900
    )
    k8s_checks.validate_training_runtime(runtime)
    assert runtime["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 3}
    assert runtime["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 900}}
    k8s_checks.validate_trainjob(trainjob.build(spec(runtime=f"{kind}/clipdpo-torch")), runtime)
    assert "podGroupPolicy" not in trainjob.build_runtime("r", "ghcr.io/x/t:1.0")["spec"]
    with pytest.raises(ValueError, match="runtime kind 'JobSet'"):
        trainjob.build_runtime("r", "ghcr.io/x/t:1.0", kind="JobSet")


def test_a_wrong_field_fails_the_crd_check():
    import copy

    good = trainjob.build(spec())
    for mutate, expected in [
        (lambda j: j["spec"]["trainer"].update(numNode=2), "numNode"),
        (lambda j: j["spec"]["trainer"].update(numNodes="2"), "is not of type 'integer'"),
        (lambda j: j["spec"].update(backoffLimit=3), "backoffLimit"),  # a PyTorchJob field, not a TrainJob's
        (
            lambda j: j["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
                "template"
            ]["spec"]["template"]["spec"]["containers"][0].update(envFrom=[]),
            "envFrom",
        ),
    ]:
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(AssertionError, match=expected):
            k8s_checks.validate_trainjob(bad)


PROBE = """
import json
import os
from clipdpo.train import dist
ctx = dist.init()
ranks = dist.all_gather_objects(ctx, ctx.rank)
# one file per rank: two processes printing to one pipe can interleave their lines
with open(os.path.join(os.environ["PROBE_OUT"], f"rank{ctx.rank}.json"), "w") as out:
    json.dump({"rank": ctx.rank, "world": ctx.world_size, "local": ctx.local_rank, "ranks": ranks}, out)
dist.shutdown(ctx)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two torch processes start: ~5 s alone, ~15 s on a busy 2-core machine
@pytest.mark.xdist_group("two-process")  # with the other 2-rank jobs (test_train_e2e.py), one at a time
def test_torchrun_takes_its_rendezvous_from_the_runtimes_pet_variables(tmp_path):
    """The torch runtime injects PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
    PET_MASTER_PORT (tests/crds/README.md); the TrainJob's bare torchrun command must start the
    right world from them alone, and the entry point's dist.init must join it."""
    (tmp_path / "pet_probe.py").write_text(PROBE)
    command = list(trainjob.TRAIN_COMMAND)
    command[0] = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command[-1] = "pet_probe"  # the train entry point's own dist set-up, without a model to train
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") and not k.startswith("PET_")
    }
    env.update(
        PET_NNODES="1",
        PET_NPROC_PER_NODE="2",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(_free_port()),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.path.join(ROOT, "src")]),
        PROBE_OUT=str(tmp_path),
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = sorted((json.loads(path.read_text()) for path in tmp_path.glob("rank*.json")), key=lambda r: r["rank"])
    assert seen == [
        {"rank": 0, "world": 2, "local": 0, "ranks": [0, 1]},
        {"rank": 1, "world": 2, "local": 1, "ranks": [0, 1]},
    ]
