"""A TrainJob meets the Kubeflow Trainer the cluster runs before it is created: a Trainer older than the
job's fields is refused in one line, never handed a job whose pod patch it would silently drop.

Replayed on the fake API server (tests/fake_k8s.py): the version a Trainer publishes (its
kubeflow-trainer-public ConfigMap, v2.2.0 on), and a cluster serving Trainer v2.1.0's real TrainJob CRD,
which has neither runtimePatches nor activeDeadlineSeconds (tests/crds/README.md)."""

from __future__ import annotations

import job_recordings as rec
import k8s_checks
import pytest
from fake_k8s import TRAINER_PUBLIC, FakeClock, FakeCluster

from clipdpo.cluster import jobspec, launch, trainerversion
from clipdpo.cluster.follow import FieldsNotServed, FollowSettings, JobFollower, JobLimits

KEY = "run-1/s3://b/model"
NAME = jobspec.job_name(KEY)
OLD_TRAINER = {"TrainJob": k8s_checks.TRAINER_V2_1_TRAINJOB_CRD}


def launch_on(cluster: FakeCluster, launcher: str = "trainjob"):
    clock = FakeClock()
    return launch.launch(
        k8s_checks.train_spec(name=NAME, node_selector={}),
        KEY,
        JobLimits(timeout_seconds=3600),
        launcher=launcher,
        follower=JobFollower(
            cluster, cluster, settings=FollowSettings(poll_seconds=15), clock=clock, sleep=clock.sleep
        ),
    )


def test_published_versions_parse_and_a_development_build_counts_as_new():
    assert trainerversion.parse_version("v2.3.0") == (2, 3, 0)
    assert trainerversion.parse_version("v2.2.0-rc.1") == (2, 2, 0)
    assert trainerversion.parse_version("2.10.1") == (2, 10, 1) > (2, 2, 0)  # numbers, not text
    assert trainerversion.parse_version("dev") is None  # the Trainer chart's development builds


@pytest.mark.parametrize(
    "config_maps",
    [
        None,  # v2.3.0 in kubeflow-system: the standalone install
        {("kubeflow", "kubeflow-trainer-public"): {"kubeflow_trainer_version": "v2.2.0"}},  # Kubeflow platform
        {TRAINER_PUBLIC: {"kubeflow_trainer_version": "dev"}},
    ],
)
def test_a_new_enough_trainer_runs_the_job_with_its_pod_patch(config_maps):
    cluster = FakeCluster(rec.succeeded("TrainJob", NAME, 4))
    if config_maps is not None:
        cluster.config_maps = config_maps
    assert launch_on(cluster).state == "Succeeded"
    assert cluster.created[0]["spec"]["runtimePatches"]


def test_a_published_version_older_than_the_job_needs_is_refused_before_anything_is_created(monkeypatch):
    monkeypatch.setattr(trainerversion, "MIN_TRAINER_VERSION", (2, 4, 0))  # a launcher ahead of the v2.3.0 cluster
    cluster = FakeCluster(rec.succeeded("TrainJob", NAME, 4))
    with pytest.raises(trainerversion.TrainerTooOld) as refused:
        launch_on(cluster)
    message = str(refused.value)
    assert "Kubeflow Trainer v2.3.0 is installed" in message and "needs v2.4.0 or newer" in message
    assert "kubeflow-system/kubeflow-trainer-public" in message and "\n" not in message
    assert cluster.created == [] and cluster.jobs == {}


def test_a_trainer_too_old_to_publish_its_version_refuses_the_strict_create_naming_the_fields(caplog):
    cluster = FakeCluster(rec.succeeded("TrainJob", NAME, 4), served_crds=OLD_TRAINER)
    cluster.config_maps = {}  # too old to publish a version
    with pytest.raises(FieldsNotServed) as refused:
        launch_on(cluster)
    message = str(refused.value)
    assert "spec.runtimePatches" in message and "spec.activeDeadlineSeconds" in message
    assert "Kubeflow Trainer v2.2.0 or newer" in message and "\n" not in message
    assert cluster.jobs == {} and "no Kubeflow Trainer version published" in caplog.text


def test_what_the_strict_create_prevents_an_old_trainer_drops_the_pod_patch_silently():
    """The same create without strict validation: accepted, and the pods would lose their ServiceAccount,
    volumes and security context (the API server's default for undeclared fields)."""
    cluster = FakeCluster(served_crds=OLD_TRAINER)
    job = launch.build_manifest(k8s_checks.train_spec(name=NAME), "trainjob", KEY)
    stored = cluster.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs", job)
    assert "runtimePatches" not in stored["spec"] and "activeDeadlineSeconds" not in stored["spec"]
    assert "serviceAccountName" not in k8s_checks.trainjob_pod_template(stored)["spec"]


def test_an_unpublished_version_on_a_current_trainer_is_only_a_warning(caplog):
    cluster = FakeCluster(rec.succeeded("TrainJob", NAME, 4))
    cluster.config_maps = {}
    assert launch_on(cluster).state == "Succeeded"
    assert "no Kubeflow Trainer version published" in caplog.text


def test_a_pytorchjob_does_not_consult_the_trainer(monkeypatch):
    monkeypatch.setattr(trainerversion, "MIN_TRAINER_VERSION", (9, 0, 0))
    cluster = FakeCluster(rec.succeeded("PyTorchJob", NAME, 4))
    assert launch_on(cluster, "pytorchjob").state == "Succeeded"


def test_the_launcher_command_line_says_it_in_one_line(monkeypatch, capsys):
    cluster = FakeCluster(served_crds=OLD_TRAINER)
    cluster.config_maps = {}
    monkeypatch.setattr(launch, "kubernetes_clients", lambda: (cluster, cluster))
    code = launch.main(
        ["--launcher", "trainjob", "--launch-key", KEY, "--run", "", "--image", "ghcr.io/x/clipdpo-train:0.1.0"]
        + ["--namespace", "ml", "--", "--input", "s3://b/pairs", "--output", "s3://b/model"]
    )
    err = capsys.readouterr().err.strip()
    # one line of its own (a handler an earlier in-process test left on a closed stream may add logging's noise)
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(said) == 1 and said[0].startswith("error: the cluster's TrainJob CRD")
    assert err.splitlines()[-1] == said[0]
