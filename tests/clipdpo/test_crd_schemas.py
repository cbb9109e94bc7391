"""Every job object the launchers can build, everything under k8s/ and the helm chart's output,
validated against the real CRDs (tests/crds/, from kubeflow/trainer release-1.9 and release-2.3)
with jsonschema, and every pod template in them with kubernetes-validate; a wrong field fails."""

from __future__ import annotations

import copy
import glob
import itertools
import os
import time

import k8s_checks
import pytest
import yaml

from clipdpo.cluster import jobspec
from clipdpo.cluster.launch import BUILDERS, build_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def matrix():
    """(launcher, nodes, gpus, kueue, gang) for both launchers, 1-4 nodes, 1-8 GPUs, with/without
    Kueue; PyTorchJob also with/without its gang schedulingPolicy (a TrainJob refuses gang=True)."""
    for launcher, nodes, gpus, kueue in itertools.product(sorted(BUILDERS), range(1, 5), range(1, 9), (False, True)):
        for gang in (False, True) if launcher == "pytorchjob" else (False,):
            yield launcher, nodes, gpus, kueue, gang


def build(launcher, nodes, gpus, kueue, gang) -> dict:
    spec = jobspec.TrainJobSpec(
        name=jobspec.job_name(f"{launcher}-{nodes}-{gpus}-{kueue}-{gang}"),
        namespace="ml",
        image="ghcr.io/x/clipdpo-train:0.1.0",
        train_args=["--input", "s3://b/pairs", "--output", "s3://b/model"],
        nodes=nodes,
        gpus_per_node=gpus,
        queue_name="team-gpus" if kueue else "",
        gang=gang,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    return build_manifest(spec, launcher, "key", run="clipdpo-7x2kq")


def pods_and_gpus(job: dict) -> tuple[int, set]:
    if job["kind"] == "PyTorchJob":
        replicas = job["spec"]["pytorchReplicaSpecs"].values()
        containers = [c for r in replicas for c in r["template"]["spec"]["containers"]]
        return sum(r["replicas"] for r in replicas), {c["resources"]["limits"]["nvidia.com/gpu"] for c in containers}
    trainer = job["spec"]["trainer"]
    return trainer["numNodes"], {trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]}


@pytest.mark.slow  # 192 objects; test_trainjob.py and test_pytorchjob.py validate representatives in the fast lane
def test_every_launcher_output_is_valid_against_the_crds():
    started, count = time.perf_counter(), 0
    for launcher, nodes, gpus, kueue, gang in matrix():
        job = build(launcher, nodes, gpus, kueue, gang)
        k8s_checks.validate_any(job)
        assert pods_and_gpus(job) == (nodes, {gpus})
        assert (job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == "team-gpus") == kueue
        if launcher == "pytorchjob":
            assert ("schedulingPolicy" in job["spec"]["runPolicy"]) == gang
        count += 1
    assert count == 2 * 4 * 8 * 2 + 4 * 8 * 2  # 192 objects
    assert time.perf_counter() - started < 60  # seconds here; a budget, not a benchmark


@pytest.mark.parametrize("launcher", sorted(BUILDERS))
def test_a_deliberately_wrong_field_fails(launcher):
    good = build(launcher, 2, 8, True, False)
    k8s_checks.validate_any(good)
    typo, wrong_type, bad_pod = copy.deepcopy(good), copy.deepcopy(good), copy.deepcopy(good)
    if launcher == "pytorchjob":
        typo["spec"]["runPolicy"]["backofLimit"] = 3
        wrong_type["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "1"
        bad_pod["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    else:
        typo["spec"]["trainer"]["numProcsPerNode"] = 8
        wrong_type["spec"]["activeDeadlineSeconds"] = "3600"
        bad_pod["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
            "template"
        ]["spec"]["template"]["spec"]["tolerations"] = "all"
    for bad, expected in ((typo, "was unexpected"), (wrong_type, "is not of type"), (bad_pod, "is not of type")):
        with pytest.raises(AssertionError, match=expected):
            k8s_checks.validate_any(bad)


def kustomize_patches() -> set[str]:
    """Files kustomizations use as patches: partial objects, checked once rendered (test_k8s_manifests)."""
    patches = set()
    for path in glob.glob(os.path.join(ROOT, "k8s", "**", "kustomization.yaml"), recursive=True):
        spec = yaml.safe_load(open(path))
        for entry in spec.get("patches", []) + spec.get("patchesStrategicMerge", []):
            target = entry.get("path") if isinstance(entry, dict) else entry
            if target:
                patches.add(os.path.normpath(os.path.join(os.path.dirname(path), target)))
    return patches


def shipped_objects() -> list[tuple[str, dict]]:
    """Every Kubernetes object in a YAML file under k8s/ (kustomizations and their patches aside)."""
    out, patches = [], kustomize_patches()
    for path in sorted(glob.glob(os.path.join(ROOT, "k8s", "**", "*.yaml"), recursive=True)):
        if os.path.basename(path) == "kustomization.yaml" or os.path.normpath(path) in patches:
            continue
        for doc in yaml.safe_load_all(open(path)):
            if doc:
                out.append((os.path.relpath(path, ROOT), doc))
    return out


def test_everything_under_k8s_is_valid():
    objects = shipped_objects()
    kinds = {obj["kind"] for _, obj in objects}
    assert {"PyTorchJob", "TrainJob", "TrainingRuntime", "Role", "RoleBinding", "ServiceAccount", "Secret"} <= kinds
    assert len(kustomize_patches()) == 2  # the overlays' RoleBinding subjects
    for path, obj in objects:
        try:
            k8s_checks.validate_any(obj)
        except Exception as err:
            raise AssertionError(f"{path}: {err}") from err


@pytest.mark.parametrize("runtime_kind", ["TrainingRuntime", "ClusterTrainingRuntime"])
def test_the_helm_charts_output_is_valid_with_every_optional_object(runtime_kind):
    from test_k8s_manifests import SECRET_VALUES, render_chart

    values = {
        **SECRET_VALUES,
        "trainingRuntime": {
            "create": True,
            "kind": runtime_kind,
            "name": "clipdpo-torch",
            "maxRestarts": 3,
            "ttlSecondsAfterFinished": 3600,
            "gangTimeoutSeconds": 600,
        },
    }
    objects = render_chart(values)
    assert runtime_kind in {o["kind"] for o in objects} and "Secret" in {o["kind"] for o in objects}
    for obj in objects:
        k8s_checks.validate_any(obj)
