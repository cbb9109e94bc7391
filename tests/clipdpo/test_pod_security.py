"""Every pod the project creates passes Pod Security "restricted" (tests/pod_security.py, checked offline),
as profile namespaces that enforce it require: the training pods of a TrainJob (on the stock runtime and on
the project's own), of a PyTorchJob, the runtime the helm chart installs and the manifests under k8s/."""

from __future__ import annotations

import glob
import os

import k8s_checks
import pytest
import yaml
from pod_security import restricted_violations

from clipdpo.cluster import pytorchjob, trainjob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "ghcr.io/x/clipdpo-train:0.1.0"


def runtime_pods(runtime: dict) -> list[dict]:
    return [
        job["template"]["spec"]["template"]["spec"] for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]
    ]


def pytorchjob_pods(job: dict) -> list[dict]:
    return [replica["template"]["spec"] for replica in job["spec"]["pytorchReplicaSpecs"].values()]


def test_the_check_rejects_what_the_admission_rejects():
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {"name": "c", "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    }
    assert restricted_violations(good) == []
    no_seccomp = {**good, "securityContext": {"runAsNonRoot": True}}
    assert restricted_violations(no_seccomp) == ["containers c: seccompProfile.type None (RuntimeDefault or Localhost)"]
    unconfined = {
        **good,
        "containers": [
            {
                "name": "c",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "Unconfined"},
                },
            }
        ],
    }
    assert "seccompProfile.type 'Unconfined'" in " ".join(restricted_violations(unconfined))
    bad = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0},
        "containers": [{"name": "c", "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    }
    found = " | ".join(restricted_violations(bad))
    for expected in (
        "hostNetwork",
        "hostPath",
        "privileged",
        "allowPrivilegeEscalation",
        "drop does not include ALL",
        "SYS_ADMIN",
        "runAsNonRoot",
        "runAsUser=0",
        "seccompProfile",
    ):
        assert expected in found, (expected, found)


@pytest.mark.parametrize("overrides", [{}, {"nodes": 1, "gpus_per_node": 1}, {"queue_name": "gpu"}])
def test_trainjob_pods_are_restricted_on_the_stock_and_the_project_runtime(overrides):
    job = trainjob.build(k8s_checks.train_spec(runtime="torch-distributed", **overrides))
    assert restricted_violations(k8s_checks.trainjob_pod_template(job)["spec"]) == []
    runtime = trainjob.build_runtime("clipdpo-torch", IMAGE)
    for pod in runtime_pods(runtime):  # the runtime alone (any TrainJob on it, patched or not)
        assert restricted_violations(pod) == []
    on_project = trainjob.build(k8s_checks.train_spec(**overrides))  # the default runtime
    assert restricted_violations(k8s_checks.trainjob_pod_template(on_project, runtime)["spec"]) == []
    k8s_checks.validate_trainjob(on_project, runtime)  # and still valid against the CRDs


@pytest.mark.parametrize("overrides", [{}, {"nodes": 1}, {"gang": True}])
def test_pytorchjob_pods_are_restricted(overrides):
    job = pytorchjob.build(k8s_checks.train_spec(**overrides))
    for pod in pytorchjob_pods(job):
        assert restricted_violations(pod) == []
    k8s_checks.validate_pytorchjob(job)


def test_the_helm_runtime_and_every_manifest_under_k8s_are_restricted():
    from test_k8s_manifests import SECRET_VALUES, render_chart

    values = {
        **SECRET_VALUES,
        "trainingRuntime": {
            "create": True,
            "name": "clipdpo-torch",
            "maxRestarts": 3,
            "ttlSecondsAfterFinished": 600,
            "gangTimeoutSeconds": 0,
        },
    }
    runtime = next(o for o in render_chart(values) if o["kind"] == "TrainingRuntime")
    assert [restricted_violations(pod) for pod in runtime_pods(runtime)] == [[]]
    checked = 0
    for path in glob.glob(os.path.join(ROOT, "k8s", "**", "*.yaml"), recursive=True):
        for obj in yaml.safe_load_all(open(path)):
            if not obj:
                continue
            pods = {
                "TrainJob": lambda o: [k8s_checks.trainjob_pod_template(o)["spec"]],
                "PyTorchJob": pytorchjob_pods,
                "TrainingRuntime": runtime_pods,
            }.get(obj.get("kind"), lambda o: [])(obj)
            for pod in pods:
                assert restricted_violations(pod) == [], path
                checked += 1
    assert checked >= 4  # the TrainJob's node pod, the PyTorchJob's Master and Worker, the runtime's node pod


def test_the_stock_runtime_alone_would_be_rejected():
    """Why the TrainJob patches the pod's security context: the stock torch-distributed pod has none."""
    stock = k8s_checks.stock_runtimes()["torch-distributed"]
    assert any(restricted_violations(pod) for pod in runtime_pods(stock))
