"""The Training Operator v1 PyTorchJob builder: the object it makes, valid against the real CRD,
with gang scheduling and Kueue; how a step follows it is tested in test_follow.py."""

from __future__ import annotations

import k8s_checks
import pytest
from k8s_checks import train_spec as spec

from clipdpo.cluster import pytorchjob


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
    assert (
        "schedulingPolicy" not in job["spec"]["runPolicy"]
        and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    )


def test_gang_scheduling_and_kueue():
    job = pytorchjob.build(spec(gang=True, queue_name="team-gpus", backoff_limit=5, active_deadline_seconds=3600))
    k8s_checks.validate_pytorchjob(job)
    policy = job["spec"]["runPolicy"]
    assert policy["schedulingPolicy"] == {"minAvailable": 4}  # master + 3 workers: every pod or none
    assert policy["backoffLimit"] == 5 * 4 + 1 and policy["activeDeadlineSeconds"] == 3600  # 5 failures of 4 pods
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    with pytest.raises(ValueError, match="LocalQueue"):
        spec(queue_name="Team GPUs")


def test_validator_catches_what_it_should():
    bad = pytorchjob.build(spec())
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(AssertionError, match="named 'pytorch'"):
        k8s_checks.validate_pytorchjob(bad)
    typo = pytorchjob.build(spec())
    typo["spec"]["runPolicy"]["cleanupPolicy"] = "All"
    with pytest.raises(AssertionError, match="cleanupPolicy. was unexpected"):
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
    with pytest.raises(ValueError, match="letter first"):
        spec(name="1-train")  # RFC 1123 allows it, the TrainJob CRD's RFC 1035 rule does not
