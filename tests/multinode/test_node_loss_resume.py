"""Two nodes lose one, the job restarts, training resumes from the last S3 checkpoint to the uninterrupted result.

Opt-in, not part of `make test` (pyproject's addopts ignore tests/multinode/): `make test-multinode`. Three
two-process training runs take minutes on two cores; the suite keeps the fast wiring check
(test_fault_tolerance.py: a restarted pod's arguments resume from the checkpoint its lost run left on S3).

What a TrainJob on the project runtime (or a PyTorchJob) does when a node's pod fails, with each piece real but
the cluster: two torchrun agents, one per "node", each started the way the torch runtime starts its `node`
container (the bare `torchrun` of trainjob.TRAIN_COMMAND, its rendezvous from PET_* variables), gloo on CPU, the
tiny LLaVA, checkpoints on S3 (SeaweedFS). Node 1's training process is SIGKILLed after step 5; node 0 must end
on its own at its next collective (a static world cannot go on without a rank), so both "pods" fail. The
restart is a new pod per node: a fresh node-local scratch folder (an emptyDir starts empty) and the same
command and arguments, `--overwrite` included, as the pipeline's train step gives them (steps.train_step). Both
nodes must resume from the step-4 checkpoint on S3 (node 1 downloads state node 0 wrote) and end bit-identical
to an uninterrupted two-node run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from pairs_fixture import write_pairs
from train_runs import ENTRY, assert_bit_identical_training, metrics

from clipdpo.cluster import trainjob
from clipdpo.demo.models import build_tiny_llava
from clipdpo.storage import Storage, join

SETTINGS = {
    "learning_rate": 5e-3,
    "global_batch_size": 8,
    "per_device_batch_size": 2,
    "max_length": 64,
    "warmup_ratio": 0.0,
    "epochs": 2,
    "save_steps": 2,
    "seed": 7,
}
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(model: str, pairs: str, output: str, extra: list[str]) -> list[str]:
    """The torch runtime's `node` container command (torchrun, rendezvous from PET_*), running the test entry
    (python -m clipdpo.train plus the kill hook) with the train step's arguments."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    assert trainjob.TRAIN_COMMAND[:2] == ["torchrun", "-m"]  # what the runtime runs; the module swapped below
    sets = [a for k, v in {"model": model, **SETTINGS}.items() for a in ("--set", f"{k}={v}")]
    return [torchrun, ENTRY, "--input", pairs, "--output", output, "--overwrite", *sets, *extra]


def start_nodes(model: str, pairs: str, output: str, pods: str, kill_node1_after: int | None = None) -> list:
    """One torchrun agent per node, as the runtime starts them: PET_* say the world, each pod its own scratch."""
    port = str(_free_port())
    agents = []
    for node in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in RANK_ENV and not k.startswith("PET_")}
        env.update(
            PET_NNODES="2",
            PET_NPROC_PER_NODE="1",
            PET_NODE_RANK=str(node),
            PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=port,
            CLIPDPO_SCRATCH=os.path.join(pods, f"node{node}-scratch"),  # an emptyDir: new and empty per pod
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            CUDA_VISIBLE_DEVICES="",
        )
        os.makedirs(env["CLIPDPO_SCRATCH"])
        extra = ["--kill-after-step", str(kill_node1_after)] if node == 1 and kill_node1_after else []
        command = node_command(model, pairs, output, extra)
        agents.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return agents


def local_copy(storage: Storage, output: str, local: str) -> str:
    """The run's model and metrics in a local folder (transformers loads a model from a path, not from S3)."""
    for uri in storage.list(join(output, "model")) + [join(output, "metrics.jsonl")]:
        storage.download_file(uri, os.path.join(local, uri[len(output) + 1 :]))
    return local


def wait_all(agents: list, timeout: float = 600) -> list[tuple[int, str]]:
    out = []
    for agent in agents:
        try:
            _, stderr = agent.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, stderr = agent.communicate()
        out.append((agent.returncode, stderr))
    return out


@pytest.mark.slow(seconds=120)  # three two-node training runs
def test_a_lost_node_restarts_and_resumes_from_the_s3_checkpoint_to_the_uninterrupted_result(bucket, tmp_path):
    model = build_tiny_llava(str(tmp_path / "tiny-llava"))
    pairs = write_pairs(join(bucket, "pairs"), n_pairs=32, n_shards=2)
    uninterrupted, output = join(bucket, "uninterrupted"), join(bucket, "model")
    ended = wait_all(start_nodes(model, pairs, uninterrupted, str(tmp_path / "pods-a")))
    assert [code for code, _ in ended] == [0, 0], ended[0][1][-3000:] + ended[1][1][-3000:]

    ended = wait_all(start_nodes(model, pairs, output, str(tmp_path / "pods-b"), kill_node1_after=5))
    (code0, err0), (code1, err1) = ended
    assert code1 != 0 and "SIGKILL after step 5 (rank 1)" in err1, err1[-3000:]
    assert code0 != 0, "node 0 went on without node 1: " + err0[-3000:]
    storage = Storage()
    assert not storage.exists(join(output, "train_summary.json"))
    steps = sorted({int(u.split("step-")[1][:8]) for u in storage.list(join(output, "checkpoints"))})
    assert steps[-1] == 4  # the newest complete checkpoint the lost run left

    ended = wait_all(start_nodes(model, pairs, output, str(tmp_path / "pods-c")))  # new pods, same command
    for code, err in ended:
        assert code == 0, err[-3000:]
        assert "resumed from" in err and "(step 4)" in err, err[-3000:]
    assert [r["step"] for r in metrics(storage, output)] == list(range(1, 9))  # 32 pairs / 8 per step x 2 epochs
    assert_bit_identical_training(
        local_copy(storage, output, str(tmp_path / "resumed")),
        local_copy(storage, uninterrupted, str(tmp_path / "uninterrupted")),
    )
