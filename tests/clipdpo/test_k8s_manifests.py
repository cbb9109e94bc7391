"""Every Kubernetes object the project ships, validated offline: k8s/ overlays (rendered by
kubectl kustomize), the PyTorchJob template, the helm chart (lint, values schema, render); RBAC
grants exactly what the launcher uses."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import job_recordings as rec
import k8s_checks
import pytest
import yaml
from fake_k8s import FakeClock, FakeCluster

from clipdpo.cluster import jobspec, pytorchjob, trainjob
from clipdpo.cluster.follow import FollowSettings, JobFollower, JobLimits, JobUnschedulable
from clipdpo.cluster.launch import build_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "clipdpo")
SECRET_VALUES = {
    "s3": {
        "create": True,
        "accessKeyId": "AKIAEXAMPLE",
        "secretAccessKey": "example-secret",
        "endpointUrl": "https://s3.example.com",
    }
}
FORBIDDEN_VERBS = {"*", "update", "patch", "escalate", "bind", "impersonate", "deletecollection"}


def kustomize(path: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize overlays (make test installs it where it can)"
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def role_rules(objects: list[dict]) -> list[dict]:
    roles = [o for o in objects if o["kind"] == "Role"]
    assert len(roles) == 1
    return roles[0]["rules"]


def permissions(rules: list[dict]) -> set[tuple]:
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", [])))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used_permissions() -> set[tuple]:
    """The API calls the launcher really makes, recorded on the fake client, as RBAC tuples: both
    launchers to success, and a job Kueue holds back (the follower reads its Workload)."""
    calls = set()

    class Recording(FakeCluster):
        def get_namespaced_custom_object(self, group, version, namespace, plural, name):
            calls.add((group, plural, "get"))
            return super().get_namespaced_custom_object(group, version, namespace, plural, name)

        def create_namespaced_custom_object(self, group, version, namespace, plural, body, **options):
            calls.add((group, plural, "create"))
            return super().create_namespaced_custom_object(group, version, namespace, plural, body, **options)

        def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None):
            calls.add((group, plural, "delete"))
            return super().delete_namespaced_custom_object(group, version, namespace, plural, name, body)

        def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
            calls.add((group, plural, "list"))
            return super().list_namespaced_custom_object(group, version, namespace, plural, label_selector)

        def list_namespaced_pod(self, *a, **k):
            calls.add(("", "pods", "list"))
            return super().list_namespaced_pod(*a, **k)

        def read_namespaced_pod_log(self, *a, **k):
            calls.add(("", "pods/log", "get"))
            return super().read_namespaced_pod_log(*a, **k)

    example = pytorchjob.example_spec()
    for launcher, kind in (("pytorchjob", "PyTorchJob"), ("trainjob", "TrainJob")):
        manifest = build_manifest(example, launcher, "key")
        for frames, admission_timeout in (
            (rec.succeeded(kind, example.name, example.nodes), 0),
            (rec.queued_by_kueue(kind, example.name, example.nodes, "6f1c2e8a-0b7d-4a51-9c1e-2d4f8b7a9e10"), 60),
        ):
            cluster, clock = Recording(frames), FakeClock()
            manifest["metadata"]["namespace"] = "clipdpo"
            try:
                JobFollower(
                    cluster, cluster, settings=FollowSettings(poll_seconds=30), clock=clock, sleep=clock.sleep
                ).run(manifest, JobLimits(timeout_seconds=3600, admission_timeout_seconds=admission_timeout))
            except JobUnschedulable:
                pass
    assert ("kueue.x-k8s.io", "workloads", "list") in calls and ("trainer.kubeflow.org", "trainjobs", "create") in calls
    return calls


def check_least_privilege(rules: list[dict], secret_name: str = "clipdpo-s3") -> None:
    granted = permissions(rules)
    assert not any(verb in FORBIDDEN_VERBS or "*" in (group, resource) for group, resource, verb, _ in granted)
    used = used_permissions()
    for group, resource, verb in used:
        assert (group, resource, verb, ()) in granted, f"launcher needs {verb} {resource}"
    # beyond what it calls: watch/list on its jobs (kubectl-style following) and get on pods, plus the Secret
    extra = {(g, r, v) for g, r, v, names in granted if not names} - used
    assert extra <= {
        (group, plural, verb)
        for group, plural in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"))
        for verb in ("watch", "list")
    } | {("", "pods", "get")}, extra
    secret_rules = [(g, r, v, names) for g, r, v, names in granted if r == "secrets"]
    assert secret_rules == [("", "secrets", "get", (secret_name,))]  # one Secret, by name, read only


def launcher_can_run_in(objects: list[dict], runner: str, namespace: str, secret: str = "clipdpo-s3") -> list[str]:
    """What stops a pipeline step running as ServiceAccount `runner` in `namespace` from launching training
    there (the train step creates its job in its own pod's namespace): RBAC as the API server applies it
    (a RoleBinding in that namespace naming runner@namespace, to a Role there granting the verb), and the
    training pods' ServiceAccount in that namespace. Empty: nothing does."""

    def allowed(group: str, resource: str, verb: str, name: str = "") -> bool:
        for binding in (o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == namespace):
            if not any(
                s["kind"] == "ServiceAccount" and s["name"] == runner and s.get("namespace") == namespace
                for s in binding["subjects"]
            ):
                continue
            for role in (
                o
                for o in objects
                if o["kind"] == "Role"
                and o["metadata"]["name"] == binding["roleRef"]["name"]
                and o["metadata"]["namespace"] == namespace
            ):
                for rule in role["rules"]:
                    if (
                        group in rule["apiGroups"]
                        and resource in rule["resources"]
                        and verb in rule["verbs"]
                        and (not rule.get("resourceNames") or name in rule["resourceNames"])
                    ):
                        return True
        return False

    problems = [
        f"403 {verb} {resource}"
        for group, resource, verb in [
            ("trainer.kubeflow.org", "trainjobs", "create"),
            ("trainer.kubeflow.org", "trainjobs", "get"),
            ("kubeflow.org", "pytorchjobs", "create"),
            ("", "pods", "list"),
            ("", "pods/log", "get"),
        ]
        if not allowed(group, resource, verb)
    ]
    if not allowed("", "secrets", "get", secret):
        problems.append(f"403 get secrets/{secret}")
    if not any(
        o["kind"] == "ServiceAccount"
        and o["metadata"]["name"] == "clipdpo-train"
        and o["metadata"]["namespace"] == namespace
        for o in objects
    ):
        problems.append("serviceaccount clipdpo-train not found")
    return problems


@pytest.mark.parametrize(
    "overlay,namespace,runner", [("standalone", "kubeflow", "pipeline-runner"), ("profile", "team-a", "default-editor")]
)
def test_kustomize_overlays_render_valid_objects_where_the_runs_execute(overlay, namespace, runner):
    objects = kustomize(os.path.join(ROOT, "k8s", "overlays", overlay))
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["Role", "RoleBinding", "ServiceAccount", "TrainingRuntime"]  # no Namespace: kubeflow / Profile's
    for obj in objects:
        k8s_checks.validate_any(obj)
        assert obj["metadata"]["namespace"] == namespace
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "clipdpo"
    assert launcher_can_run_in(objects, runner, namespace) == []
    assert not any(o["kind"].startswith("Cluster") for o in objects)
    check_least_privilege(role_rules(objects))


def test_kustomizations_use_no_deprecated_fields():
    for path in glob.glob(os.path.join(ROOT, "k8s", "**", "kustomization.yaml"), recursive=True):
        spec = yaml.safe_load(open(path))
        assert not {"bases", "commonLabels", "patchesStrategicMerge", "patchesJson6902", "vars"} & set(spec), path
        rendered = subprocess.run(
            [shutil.which("kubectl"), "kustomize", os.path.dirname(path)], capture_output=True, text=True
        )
        assert "deprecated" not in rendered.stderr + rendered.stdout, (path, rendered.stderr)


@pytest.mark.parametrize("namespace,runner", [("kubeflow", "pipeline-runner"), ("team-a", "default-editor")])
def test_helm_puts_the_launchers_rbac_where_the_runs_execute(namespace, runner):
    objects = render_chart({**SECRET_VALUES, "pipelineRunner": {"serviceAccount": runner}}, namespace)
    assert launcher_can_run_in(objects, runner, namespace) == []
    assert next(o for o in objects if o["kind"] == "Secret")["metadata"]["namespace"] == namespace


def test_the_namespace_check_replays_a_split_install():
    """The old defaults: objects in one namespace, the runner bound from kubeflow: the launcher in kubeflow
    gets 403 on trainjobs, then no clipdpo-train ServiceAccount, then no Secret."""
    objects = render_chart(SECRET_VALUES, "ml")
    problems = launcher_can_run_in(objects, "pipeline-runner", "kubeflow")
    assert "403 create trainjobs" in problems and "serviceaccount clipdpo-train not found" in problems
    assert "403 get secrets/clipdpo-s3" in problems


def test_kubernetes_validate_rejects_a_broken_object():
    with pytest.raises(Exception):
        k8s_checks.validate_core(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "x"},
                "rules": [{"verbs": "get"}],
            }
        )


def test_shipped_pytorchjob_template_is_current_and_valid():
    path = os.path.join(ROOT, "k8s", "pytorchjob", "train-pytorchjob.yaml")
    assert open(path).read() == pytorchjob.render_example(), "regenerate: python -m clipdpo.cluster.pytorchjob"
    job = yaml.safe_load(open(path))
    k8s_checks.validate_pytorchjob(job)
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1


def test_shipped_trainjob_template_and_runtime_are_current_and_valid():
    path = os.path.join(ROOT, "k8s", "trainjob", "train-trainjob.yaml")
    assert open(path).read() == trainjob.render_example(), "regenerate: python -m clipdpo.cluster.trainjob"
    job = yaml.safe_load(open(path))
    k8s_checks.validate_trainjob(job)
    assert job["spec"]["trainer"]["numNodes"] == 2
    path = os.path.join(ROOT, "k8s", "base", "trainingruntime.yaml")
    assert open(path).read() == trainjob.render_runtime_example(), (
        "regenerate: python -m clipdpo.cluster.trainjob runtime > k8s/base/trainingruntime.yaml"
    )
    k8s_checks.validate_trainjob(job, yaml.safe_load(open(path)))  # the runtime the manual TrainJob names


def helm():
    import helm_python

    return helm_python


def render_chart(values: dict, namespace: str = "ml") -> list[dict]:
    rendered = helm().Chart.load(CHART).render(values, name="clipdpo", namespace=namespace, is_install=True)
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def test_helm_chart_lints_and_renders_valid_objects():
    report = helm().lint(CHART, SECRET_VALUES, strict=True)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report
    objects = render_chart(SECRET_VALUES)
    assert sorted(o["kind"] for o in objects) == [
        "ConfigMap",
        "Role",
        "RoleBinding",
        "Secret",
        "ServiceAccount",
        "TrainingRuntime",
    ]
    for obj in objects:
        k8s_checks.validate_any(obj)
        assert obj["metadata"]["namespace"] == "ml"
    secret = next(o for o in objects if o["kind"] == "Secret")
    assert set(secret["stringData"]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
    }
    check_least_privilege(role_rules(objects))
    # the chart and k8s/ grant the same
    assert permissions(role_rules(objects)) == permissions(
        role_rules(kustomize(os.path.join(ROOT, "k8s", "overlays", "profile")))
    )
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    from pipelines.settings import PipelineSettings

    assert settings["CLIPDPO_S3_SECRET"] == PipelineSettings().s3_secret  # the pipeline reads the same Secret


@pytest.mark.parametrize("kind", ["TrainingRuntime", "ClusterTrainingRuntime"])
def test_helm_installs_a_valid_project_training_runtime_equal_to_the_builders(kind):
    values = {
        **SECRET_VALUES,
        "trainingRuntime": {
            "create": True,
            "kind": kind,
            "name": "clipdpo-torch",
            "maxRestarts": 5,
            "ttlSecondsAfterFinished": 600,
            "gangTimeoutSeconds": 900,
        },
    }
    objects = render_chart(values)
    runtime = next(o for o in objects if o["kind"] == kind)
    k8s_checks.validate_training_runtime(runtime)
    expected = trainjob.build_runtime(
        "clipdpo-torch",
        "ghcr.io/clipdpo/clipdpo-train:0.1.0",
        kind=kind,
        max_restarts=5,
        ttl_seconds_after_finished=600,
        gang_timeout_seconds=900,
    )
    assert runtime["spec"] == expected["spec"] and runtime["metadata"]["name"] == "clipdpo-torch"
    # namespaced where the runs (and so their TrainJobs) are; a cluster runtime has no namespace
    assert runtime["metadata"].get("namespace") == ("ml" if kind == "TrainingRuntime" else None)
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert settings["CLIPDPO_TRAIN_RUNTIME"] == f"{kind}/clipdpo-torch"  # what the train step names
    # a TrainJob on it makes a valid pod; without gang timeout there is no podGroupPolicy
    job = trainjob.build(
        jobspec.TrainJobSpec(
            name="clipdpo-train-x",
            namespace="ml",
            image="ghcr.io/x/t:1.0",
            train_args=[],
            runtime=settings["CLIPDPO_TRAIN_RUNTIME"],
        )
    )
    k8s_checks.validate_trainjob(job, runtime)
    plain = render_chart({**values, "trainingRuntime": {**values["trainingRuntime"], "gangTimeoutSeconds": 0}})
    assert "podGroupPolicy" not in next(o for o in plain if o["kind"] == kind)["spec"]


def test_helm_runtime_defaults_and_opt_outs():
    """By default the chart installs the namespaced runtime the launcher names by default; without it, the runs
    name another (train.runtime), and a PyTorchJob install gets none (the Trainer's CRDs may not exist there)."""
    from pipelines.run import build_parser

    objects = render_chart(SECRET_VALUES)
    runtime = next(o for o in objects if o["kind"] == "TrainingRuntime")
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert f"TrainingRuntime/{runtime['metadata']['name']}" == settings["CLIPDPO_TRAIN_RUNTIME"]
    assert (
        settings["CLIPDPO_TRAIN_RUNTIME"]
        == jobspec.DEFAULT_RUNTIME
        == jobspec.TrainJobSpec("a", "n", "i:1", []).runtime
    )
    assert build_parser().parse_args([]).runtime == jobspec.DEFAULT_RUNTIME  # the run's default, no env set
    assert runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == jobspec.DEFAULT_RESTARTS
    stock = render_chart(
        {**SECRET_VALUES, "train": {"runtime": "torch-distributed"}, "trainingRuntime": {"create": False}}
    )
    assert not {"TrainingRuntime", "ClusterTrainingRuntime"} & {o["kind"] for o in stock}
    assert next(o for o in stock if o["kind"] == "ConfigMap")["data"]["CLIPDPO_TRAIN_RUNTIME"] == "torch-distributed"
    with pytest.raises(Exception, match="train.runtime is empty and trainingRuntime.create is false"):
        render_chart({**SECRET_VALUES, "trainingRuntime": {"create": False}})
    operator = render_chart({**SECRET_VALUES, "train": {"launcher": "pytorchjob"}})
    assert "TrainingRuntime" not in {o["kind"] for o in operator}


def test_helm_notes_tell_the_next_command():
    rendered = helm().Chart.load(CHART).render(SECRET_VALUES, name="clipdpo", namespace="ml", is_install=True)
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    assert "make pipeline-run" in notes and "make images push" in notes


def test_helm_existing_secret_and_values_schema():
    objects = render_chart(
        {"s3": {"create": False, "secretName": "team-s3"}, "pipelineRunner": {"serviceAccount": "default-editor"}},
        "team-a",
    )
    assert "Secret" not in [o["kind"] for o in objects]
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "default-editor", "namespace": "team-a"}
    check_least_privilege(role_rules(objects), secret_name="team-s3")
    chart = helm().Chart.load(CHART)
    chart.validate_schema({})  # the defaults are valid
    for bad in (
        {"images": {"tag": "latest"}},
        {"train": {"nodes": 0}},
        {"s3": {"bucket": "Bad_Bucket"}},
        {"unknown": 1},
        {"train": {"gpusPerNode": "eight"}},
        {"train": {"launcher": "mpijob"}},
        {"trainingRuntime": {"maxRestarts": -1}},
        {"trainingRuntime": {"kind": "JobSet"}},
        {"train": {"runtime": "JobSet/clipdpo-torch"}},
        {"pipelineRunner": {"serviceAccount": "pipeline-runner", "namespace": "kubeflow"}},
    ):
        with pytest.raises(Exception):
            chart.validate_schema(bad)
    with pytest.raises(Exception, match="accessKeyId"):
        render_chart({"s3": {"create": True}})  # no credentials: a clear failure, not an empty Secret
    defaults = render_chart({})  # the default: the Secret already exists, the chart only names it
    assert "Secret" not in [o["kind"] for o in defaults]
    assert next(o for o in defaults if o["kind"] == "ConfigMap")["data"]["CLIPDPO_S3_SECRET"] == "clipdpo-s3"


def test_helm_passes_the_pipelines_cluster_values_and_pull_secrets():
    """clusterValues and images.pullSecrets reach the ConfigMap as CLIPDPO_CLUSTER_VALUES, which the pipeline's
    values load as they are; the training pods' ServiceAccount pulls with the same Secrets."""
    from pipelines.cluster_values import ClusterValues, load_values

    values = {
        **SECRET_VALUES,
        "images": {"registry": "r.example.com/ml", "tag": "1.0.0", "pullSecrets": ["regcred"]},
        "clusterValues": {"steps": {"train": {"retries": 5}}, "gpu_queue_name": "team-gpus"},
    }
    objects = render_chart(values)
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    loaded = load_values(settings["CLIPDPO_CLUSTER_VALUES"])
    assert loaded.image_pull_secrets == ["regcred"] and loaded.gpu_queue_name == "team-gpus"
    assert loaded.step("train").retries == 5
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    k8s_checks.validate_core(account)
    assert account["imagePullSecrets"] == [{"name": "regcred"}]
    defaults = render_chart(SECRET_VALUES)  # nothing set: the defaults, no pull secrets
    assert load_values(next(o for o in defaults if o["kind"] == "ConfigMap")["data"]["CLIPDPO_CLUSTER_VALUES"]) == (
        ClusterValues()
    )
    assert "imagePullSecrets" not in next(o for o in defaults if o["kind"] == "ServiceAccount")
    with pytest.raises(Exception):
        helm().Chart.load(CHART).validate_schema({"images": {"pullSecrets": ["Bad_Name"]}})
