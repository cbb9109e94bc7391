"""Recorded cluster states (job status + pods + Kueue workloads) for every way a training job ends,
for both kinds, in the shapes the controllers write.

Condition types and reasons follow the controllers' constants: Training Operator v1 (Created,
Running, Restarting, Succeeded, Failed, Suspended; PyTorchJob<Type> reasons, BackoffLimitExceeded,
DeadlineExceeded), Trainer v2 (Created/JobsCreationSucceeded, Suspended, Complete, Failed; Complete
and Failed carry the JobSet's reason: AllJobsCompleted, FailedJobs, ...), Kueue (a Workload whose
QuotaReserved is False with the flavor assigner's message), kube-scheduler (PodScheduled False,
Unschedulable, "0/N nodes are available: ..."). Each job status validates against its CRD.
"""

from __future__ import annotations

from fake_k8s import DELETED

T0 = "2026-11-29T10:00:00Z"
INSUFFICIENT_GPU = (
    "0/12 nodes are available: 4 Insufficient nvidia.com/gpu, 8 node(s) had untolerated taint "
    "{node-role.kubernetes.io/control-plane: }. preemption: 0/12 nodes are available: "
    "4 No preemption victims found for incoming pod."
)
KUEUE_NO_QUOTA = (
    "couldn't assign flavors to pod set node: insufficient unused quota for nvidia.com/gpu in "
    "flavor h100, 16 more needed"
)


def _condition(kind: str, type_: str, reason: str, message: str, status: str = "True") -> dict:
    condition = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}
    if kind == "PyTorchJob":
        condition["lastUpdateTime"] = T0
    return condition


def _pod_names(kind: str, job: str, nodes: int) -> list[tuple[str, dict]]:
    if kind == "PyTorchJob":
        roles = [("master", 0)] + [("worker", i) for i in range(nodes - 1)]
        return [
            (
                f"{job}-{role}-{i}",
                {
                    "training.kubeflow.org/job-name": job,
                    "training.kubeflow.org/replica-type": role,
                    "training.kubeflow.org/replica-index": str(i),
                },
            )
            for role, i in roles
        ]
    return [
        (
            f"{job}-node-0-{i}-x{i}k2p",
            {
                "jobset.sigs.k8s.io/jobset-name": job,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": str(i),
            },
        )
        for i in range(nodes)
    ]


def _container(kind: str) -> str:
    return "pytorch" if kind == "PyTorchJob" else "node"


IMAGE = "ghcr.io/x/clipdpo-train:0.1.0"
# kubelet's waiting reasons and messages (pkg/kubelet/images, kuberuntime) for pods that cannot start
IMAGE_NOT_FOUND = (
    f'failed to pull and unpack image "{IMAGE}": failed to resolve reference "{IMAGE}": {IMAGE}: not found'
)
ERR_IMAGE_PULL = ("ErrImagePull", f"rpc error: code = NotFound desc = {IMAGE_NOT_FOUND}")
IMAGE_PULL_BACKOFF = ("ImagePullBackOff", f'Back-off pulling image "{IMAGE}": ErrImagePull: {IMAGE_NOT_FOUND}')
MISSING_SECRET = ("CreateContainerConfigError", 'secret "clipdpo-s3" not found')
CONTAINER_CREATING = ("ContainerCreating", "")


def crash_loop(pod: str) -> tuple[str, str]:
    return "CrashLoopBackOff", f"back-off 5m0s restarting failed container=node pod={pod}_ml(0d5c1f2e)"


def pods(
    kind: str,
    job: str,
    nodes: int,
    *,
    state: str = "running",
    failed: int | None = None,
    restarted: bool = False,
    waiting: tuple[str, str] | None = None,
    restarts: int = 0,
) -> list[dict]:
    """state: running | pending (unschedulable) | succeeded | waiting (placed, the training container waits for
    `waiting`: (reason, message), after `restarts` crashes); `failed`: index of a pod whose container
    exited 137 (OOMKilled), now or, with `restarted`, before its last restart."""
    out = []
    for index, (name, labels) in enumerate(_pod_names(kind, job, nodes)):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "labels": labels},
            "spec": {"containers": [{"name": _container(kind), "image": IMAGE}]},
        }
        if state == "waiting":
            reason, message = waiting
            if reason == "CrashLoopBackOff":
                message = crash_loop(name)[1]
            status = {
                "name": _container(kind),
                "ready": False,
                "restartCount": restarts,
                "image": IMAGE,
                "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}},
            }
            if restarts:
                status["lastState"] = {
                    "terminated": {"exitCode": 1, "reason": "Error", "startedAt": T0, "finishedAt": T0}
                }
            pod["status"] = {
                "phase": "Pending" if not restarts else "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [status],
            }
            out.append(pod)
            continue
        if state == "pending":
            pod["status"] = {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": INSUFFICIENT_GPU}
                ],
            }
            out.append(pod)
            continue
        terminated = {"exitCode": 0, "reason": "Completed"}
        now = {"terminated": terminated} if state == "succeeded" else {"running": {"startedAt": T0}}
        status = {
            "name": _container(kind),
            "ready": state == "running",
            "restartCount": 0,
            "image": "ghcr.io/x/clipdpo-train:0.1.0",
            "imageID": "",
            "state": now,
        }
        if index == failed:
            oom = {"exitCode": 137, "reason": "OOMKilled", "startedAt": T0, "finishedAt": T0}
            status.update(
                {"lastState": {"terminated": oom}, "restartCount": 1}
                if restarted
                else {"state": {"terminated": oom}, "ready": False}
            )
        phase = {"running": "Running", "succeeded": "Succeeded"}[state]
        pod["status"] = {
            "phase": "Failed" if index == failed and not restarted else phase,
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [status],
        }
        out.append(pod)
    return out


def status(kind: str, conditions: list[dict], nodes: int, active: int = 0) -> dict:
    if kind == "PyTorchJob":
        replicas = {"Master": {"active": min(active, 1)}}
        if nodes > 1:
            replicas["Worker"] = {"active": max(active - 1, 0)}
        return {"conditions": conditions, "replicaStatuses": replicas, "startTime": T0, "lastReconcileTime": T0}
    return {
        "conditions": conditions,
        "jobsStatus": [
            {"name": "node", "active": min(active, 1), "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
        ],
    }


def _created(kind: str) -> list[dict]:
    if kind == "PyTorchJob":
        return [_condition(kind, "Created", "PyTorchJobCreated", "PyTorchJob ml/j is created.")]
    return [_condition(kind, "Created", "JobsCreationSucceeded", "Succeeded to create Jobs")]


def _running(kind: str) -> list[dict]:
    if kind == "PyTorchJob":
        return _created(kind) + [_condition(kind, "Running", "PyTorchJobRunning", "PyTorchJob ml/j is running.")]
    return _created(kind)  # a TrainJob has no Running condition: its pods say it runs


def _frame(kind, job, nodes, conditions, pod_state="running", **pod_args) -> dict:
    return {
        "status": status(kind, conditions, nodes, active=nodes if pod_state == "running" else 0),
        "pods": pods(kind, job, nodes, state=pod_state, **pod_args),
    }


def succeeded(kind: str, job: str, nodes: int) -> list:
    if kind == "PyTorchJob":
        done = _condition(kind, "Succeeded", "PyTorchJobSucceeded", "PyTorchJob ml/j successfully completed.")
    else:
        done = _condition(kind, "Complete", "AllJobsCompleted", "jobset completed successfully")
    if kind == "PyTorchJob":
        done_conditions = [dict(c, status="False") if c["type"] == "Running" else c for c in _running(kind)] + [done]
    else:
        done_conditions = _running(kind) + [done]
    return [
        _frame(kind, job, nodes, _created(kind)),
        _frame(kind, job, nodes, _running(kind)),
        _frame(kind, job, nodes, _running(kind)),
        _frame(kind, job, nodes, done_conditions, "succeeded"),
    ]


def failed(kind: str, job: str, nodes: int, failed_index: int) -> list:
    """A worker is OOM-killed; the operator gives up (v1: backoff limit; v2: the JobSet failed)."""
    if kind == "PyTorchJob":
        restarting = _running(kind) + [
            _condition(
                kind,
                "Restarting",
                "PyTorchJobRestarting",
                "PyTorchJob j is restarting because 1 Worker replica(s) failed.",
            )
        ]
        end = _running(kind) + [
            _condition(
                kind,
                "Failed",
                "BackoffLimitExceeded",
                "PyTorchJob j has failed because it has reached the specified backoff limit",
            )
        ]
        return [
            _frame(kind, job, nodes, _running(kind)),
            _frame(kind, job, nodes, restarting, failed=failed_index, restarted=True),
            _frame(kind, job, nodes, end, failed=failed_index),
        ]
    end = _running(kind) + [_condition(kind, "Failed", "FailedJobs", "jobset failed due to one or more job failures")]
    return [_frame(kind, job, nodes, _running(kind)), _frame(kind, job, nodes, end, failed=failed_index)]


def deadline(kind: str, job: str, nodes: int) -> list:
    """activeDeadlineSeconds ran out: the operator fails the job and stops its pods."""
    message = (
        f"{kind} j has failed because it was active longer than specified deadline"
        if kind == "PyTorchJob"
        else "TrainJob exceeded its activeDeadlineSeconds"
    )
    end = _running(kind) + [_condition(kind, "Failed", "DeadlineExceeded", message)]
    return [
        _frame(kind, job, nodes, _running(kind)),
        _frame(kind, job, nodes, _running(kind)),
        {"status": status(kind, end, nodes), "pods": []},
    ]


def deleted(kind: str, job: str, nodes: int) -> list:
    return [_frame(kind, job, nodes, _running(kind)), _frame(kind, job, nodes, _running(kind)), DELETED]


def unschedulable(kind: str, job: str, nodes: int) -> list:
    """Pods created but never placed: not enough free GPUs, forever."""
    return [_frame(kind, job, nodes, _created(kind), "pending")]


def queued_by_kueue(kind: str, job: str, nodes: int, uid: str) -> list:
    """Kueue keeps the job suspended (no pods at all): its Workload has no quota reserved."""
    reason = "PyTorchJobSuspended" if kind == "PyTorchJob" else "Suspended"
    conditions = _created(kind) + [_condition(kind, "Suspended", reason, f"{kind} j is suspended.")]
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {
            "name": f"{kind.lower()}-{job}-3c1f9",
            "namespace": "ml",
            "labels": {"kueue.x-k8s.io/job-uid": uid},
        },
        "status": {
            "conditions": [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": KUEUE_NO_QUOTA,
                    "lastTransitionTime": T0,
                }
            ]
        },
    }
    return [{"status": status(kind, conditions, nodes), "pods": [], "workloads": [workload]}]


def running_forever(kind: str, job: str, nodes: int) -> list:
    return [_frame(kind, job, nodes, _running(kind))]


def _resumed(kind: str) -> list[dict]:
    """Kueue admitted the job: it is unsuspended (its Suspended condition turns False) and runs."""
    if kind == "PyTorchJob":
        resumed = _condition(kind, "Suspended", "PyTorchJobResumed", "PyTorchJob j is resumed.", status="False")
    else:
        resumed = _condition(kind, "Suspended", "Resumed", "TrainJob is resumed", status="False")
    return [resumed]


def admitted_after_queue(kind: str, job: str, nodes: int, uid: str, queued_polls: int) -> list:
    """`queued_polls` polls suspended in a Kueue queue (no quota), then admitted; it runs and succeeds."""
    queued = queued_by_kueue(kind, job, nodes, uid) * queued_polls
    after = []
    for frame in succeeded(kind, job, nodes):
        conditions = frame["status"]["conditions"]
        after.append(
            {**frame, "status": {**frame["status"], "conditions": conditions[:1] + _resumed(kind) + conditions[1:]}}
        )
    return queued + after


def cannot_start(kind: str, job: str, nodes: int, waits: list[tuple[str, str]], restarts: int = 0) -> list:
    """Every pod placed, its training container waiting: one frame per (reason, message) in `waits`, the last
    one forever (ErrImagePull and ImagePullBackOff alternate while kubelet retries the pull)."""
    return [
        {
            "status": status(kind, _created(kind), nodes, active=nodes),
            "pods": pods(kind, job, nodes, state="waiting", waiting=wait, restarts=restarts),
        }
        for wait in waits
    ]
