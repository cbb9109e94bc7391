"""Offline schema checks for Kubernetes objects.

Core objects: kubernetes-validate (the Kubernetes OpenAPI JSON schemas, strict: unknown fields
fail). Custom resources (PyTorchJob, TrainJob, ClusterTrainingRuntime, TrainingRuntime): `jsonschema`
against the real CRDs' openAPIV3Schema (tests/crds/), made strict the way `kubectl --validate=strict` is:
unknown fields fail unless the schema preserves them; x-kubernetes-* keys are dropped (CEL rules
are not evaluated: the builders check names themselves). A namespaced TrainingRuntime is checked
against the ClusterTrainingRuntime CRD's schema where its own CRD is not in the folder: both kinds'
spec is the Trainer's one TrainingRuntimeSpec type (their release-2.3 CRDs differ in descriptions
only). Every pod template inside is then validated as a core v1 PodTemplate; a TrainJob's after
merging it into its runtime's template, as the Trainer controller does. PyTorchJob is also walked
against the Kubeflow training SDK's generated models (`openapi_types` / `attribute_map`).
"""

from __future__ import annotations

import copy
import functools
import glob
import json
import os
import re

import jsonschema
import kubernetes_validate
import yaml

from clipdpo.cluster import jobspec, trainjob

K8S_VERSION = "1.37.0"
# kubernetes-validate re-reads its JSON schemas (MBs) from disk on every call; they never change
# within a test session, so read each once (the validation itself is untouched).
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
        kubernetes_validate.utils.schema_contents
    )
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
CLEAN_POD_POLICIES = {"None", "Running", "All"}
REPLICA_TYPES = {"Master", "Worker"}


def train_spec(**overrides) -> jobspec.TrainJobSpec:
    """The job the builder and follower tests start from: 4 nodes x 8 H100s of one run's model, tolerating
    the GPU taint; `overrides` replace any field."""
    values = dict(
        name=jobspec.job_name("run-1/s3://b/model"),
        namespace="ml",
        image="ghcr.io/x/clipdpo-train:0.1.0",
        train_args=["--input", "s3://b/pairs", "--output", "s3://b/model"],
        nodes=4,
        gpus_per_node=8,
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    values.update(overrides)
    return jobspec.TrainJobSpec(**values)


def validate_core(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _model(name: str):
    import kubeflow.training.models as models

    return getattr(models, name)


def _walk(value, type_name: str, where: str, pod_templates: list) -> None:
    if type_name == "V1PodTemplateSpec":  # a core type: checked by kubernetes-validate below
        pod_templates.append((where, value))
        return
    if type_name.startswith("dict("):
        inner = re.match(r"dict\(str, (.+)\)", type_name).group(1)
        assert isinstance(value, dict), f"{where}: expected an object"
        for key, item in value.items():
            _walk(item, inner, f"{where}.{key}", pod_templates)
        return
    if type_name.startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            _walk(item, type_name[5:-1], f"{where}[{i}]", pod_templates)
        return
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitives:
        assert isinstance(value, primitives[type_name]) and not (type_name == "int" and isinstance(value, bool)), (
            f"{where}: expected {type_name}, got {value!r}"
        )
        return
    if type_name.startswith("V1"):  # other core types (ObjectMeta): validated by key set only
        assert isinstance(value, dict), f"{where}: expected an object"
        return
    model = _model(type_name)
    assert isinstance(value, dict), f"{where}: expected an object for {type_name}"
    json_to_attr = {json_key: attr for attr, json_key in model.attribute_map.items()}
    unknown = set(value) - set(json_to_attr)
    assert not unknown, f"{where}: unknown field(s) {sorted(unknown)} for {type_name}"
    for key, item in value.items():
        _walk(item, model.openapi_types[json_to_attr[key]], f"{where}.{key}", pod_templates)


def validate_pytorchjob(job: dict) -> None:
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    validate_crd_object(job)
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": job["metadata"]})  # metadata schema
    templates: list = []
    _walk(job["spec"], "KubeflowOrgV1PyTorchJobSpec", "spec", templates)
    spec = job["spec"]
    assert set(spec["pytorchReplicaSpecs"]) <= REPLICA_TYPES, spec["pytorchReplicaSpecs"].keys()
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["runPolicy"]["cleanPodPolicy"] in CLEAN_POD_POLICIES
    for role, replica in spec["pytorchReplicaSpecs"].items():
        assert replica["restartPolicy"] in RESTART_POLICIES
        assert isinstance(replica["replicas"], int) and replica["replicas"] >= 1  # the SDK does not check counts
        names = [c["name"] for c in replica["template"]["spec"]["containers"]]
        assert "pytorch" in names, f"{role}: the operator needs a container named 'pytorch', got {names}"
    for _where, template in templates:
        _validate_pod_template(template)


# --- custom resources against the CRDs -------------------------------------------------------------

CRD_DIR = os.environ.get("CLIPDPO_K8S_CRDS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "crds")
SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def _load_yaml(path: str):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2 MB
    with open(path) as handle:
        return yaml.load(handle, Loader=loader)


def strict_schema(node: dict) -> dict:
    """An OpenAPI v3 structural schema as a JSON schema that refuses unknown fields."""
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key in SCHEMA_MAPS:
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in SCHEMA_LISTS:
            out[key] = [strict_schema(sub) for sub in value]
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = strict_schema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validators() -> dict:
    """{(apiVersion, kind): jsonschema validator} for every served version of every CRD in CRD_DIR."""
    validators = {}
    for path in sorted(glob.glob(os.path.join(CRD_DIR, "*.yaml"))):
        crd = _load_yaml(path)
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    assert validators, f"no CRDs found in {CRD_DIR}"
    for (api_version, kind), validator in list(validators.items()):  # see the module docstring
        if kind == "ClusterTrainingRuntime":
            validators.setdefault((api_version, "TrainingRuntime"), validator)
    return validators


# The TrainJob CRD of Kubeflow Trainer v2.1.0, the last without runtimePatches: what an older cluster serves.
# Beside the CRDs, not in CRD_DIR (which may point at a copy without it), and in a folder of its own so that
# crd_validators' glob keeps to the current CRDs.
TRAINER_V2_1_TRAINJOB_CRD = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "crds", "trainer-v2.1.0", "trainer.kubeflow.org_trainjobs.yaml"
)


@functools.lru_cache(maxsize=None)
def _served_validator(crd_path: str, api_version: str) -> jsonschema.Draft7Validator:
    crd = _load_yaml(crd_path)
    version = next(v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == api_version)
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def undeclared_fields(obj: dict, crd_path: str) -> list[str]:
    """The fields of `obj` (dotted paths, e.g. spec.runtimePatches) that the CRD at `crd_path` does not declare:
    what an API server serving that CRD refuses under strict field validation, or else drops."""
    found = set()
    for error in _served_validator(crd_path, obj["apiVersion"]).iter_errors(obj):
        if error.validator != "additionalProperties":
            continue
        declared = set(error.schema.get("properties", {}))
        where = ".".join(str(p) for p in error.absolute_path if not isinstance(p, int))
        found |= {f"{where}.{key}" if where else key for key in set(error.instance) - declared}
    return sorted(found)


def without_fields(obj: dict, paths: list[str]) -> dict:
    """`obj` with the fields at these dotted paths removed (inside lists: from every item)."""

    def drop(node, keys: list[str]) -> None:
        if isinstance(node, list):
            for item in node:
                drop(item, keys)
        elif isinstance(node, dict) and keys[0] in node:
            if len(keys) == 1:
                del node[keys[0]]
            else:
                drop(node[keys[0]], keys[1:])

    out = copy.deepcopy(obj)
    for path in paths:
        drop(out, path.split("."))
    return out


def validate_crd_object(obj: dict) -> None:
    """Fails (AssertionError naming every bad field) unless `obj` fits its CRD's schema."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    validator = crd_validators().get(key)
    assert validator is not None, f"no CRD for {key} in {CRD_DIR}: known {sorted(crd_validators())}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, f"{key[1]} {obj.get('metadata', {}).get('name')}: " + "; ".join(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:10]
    )
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})  # metadata schema


def _validate_pod_template(template: dict) -> None:
    _validate_pod_template_json(json.dumps(template, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _validate_pod_template_json(template: str) -> None:  # many jobs share a template: check each once
    validate_core(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": json.loads(template)}
    )


def _merge_named(base: list, patch: list) -> list:
    merged = {item["name"]: copy.deepcopy(item) for item in base}
    for item in patch:
        merged[item["name"]] = {**merged.get(item["name"], {}), **copy.deepcopy(item)}
    return list(merged.values())


def merge_pod_template(base: dict, patch: dict) -> dict:
    """A runtime's pod template with a TrainJob's patch applied (containers/volumes merge by name)."""
    out = copy.deepcopy(base)
    labels = {**out.get("metadata", {}).get("labels", {}), **patch.get("metadata", {}).get("labels", {})}
    out.setdefault("metadata", {})["labels"] = labels
    for key, value in patch.get("spec", {}).items():
        named = key in ("containers", "initContainers", "volumes")
        out["spec"][key] = _merge_named(out["spec"].get(key, []), value) if named else copy.deepcopy(value)
    return out


@functools.lru_cache(maxsize=None)
def stock_runtimes() -> dict:
    return {
        rt["metadata"]["name"]: rt
        for path in sorted(glob.glob(os.path.join(CRD_DIR, "*.yaml")))
        if (rt := _load_yaml(path)).get("kind") == "ClusterTrainingRuntime"
    }


def _node_template(runtime: dict, job_name: str) -> dict:
    jobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return next(j for j in jobs if j["name"] == job_name)["template"]["spec"]["template"]


def known_runtimes() -> dict:
    """{(kind, name): runtime} a TrainJob may name here: the Trainer's stock ClusterTrainingRuntimes and the
    project's TrainingRuntime as helm and k8s/ install it (build_runtime's defaults)."""
    runtimes = {("ClusterTrainingRuntime", name): rt for name, rt in stock_runtimes().items()}
    project = trainjob.build_runtime(jobspec.PROJECT_RUNTIME_NAME, "ghcr.io/clipdpo/clipdpo-train:0.1.0")
    runtimes[(project["kind"], jobspec.PROJECT_RUNTIME_NAME)] = project
    return runtimes


def validate_training_runtime(runtime: dict) -> None:
    """A TrainingRuntime or ClusterTrainingRuntime against its CRD, and the pod template of each replicated job."""
    assert runtime["kind"] in jobspec.RUNTIME_KINDS, runtime["kind"]
    validate_crd_object(runtime)
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        _validate_pod_template(job["template"]["spec"]["template"])


def validate_trainjob(job: dict, runtime: dict | None = None) -> None:
    """The TrainJob against its CRD, then the pod it makes: runtime template + patches + trainer."""
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    validate_crd_object(job)
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, f"TrainJob name {name!r} (CEL rule)"
    _validate_pod_template(trainjob_pod_template(job, runtime))


def trainjob_pod_template(job: dict, runtime: dict | None = None) -> dict:
    """The pod template a TrainJob's node pods get: its runtime's, with its patches and trainer applied."""
    ref = job["spec"]["runtimeRef"]
    runtime = runtime or known_runtimes()[(ref.get("kind", "ClusterTrainingRuntime"), ref["name"])]
    assert (runtime["kind"], runtime["metadata"]["name"]) == (ref.get("kind", "ClusterTrainingRuntime"), ref["name"])
    template = copy.deepcopy(_node_template(runtime, "node"))
    for patch in job["spec"].get("runtimePatches", []):
        for replicated in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            assert replicated["name"] == "node", f"patch for unknown replicated job {replicated['name']!r}"
            template = merge_pod_template(template, replicated["template"]["spec"]["template"])
    trainer = job["spec"]["trainer"]
    node = next(c for c in template["spec"]["containers"] if c["name"] == "node")
    node.update({k: trainer[k] for k in ("image", "command", "args") if k in trainer})
    node["env"] = _merge_named(node.get("env", []), trainer.get("env", []))
    node["resources"] = trainer.get("resourcesPerNode", {})
    return template


def validate_any(obj: dict) -> None:
    """Route an object to its validator: the CRD kinds we ship, else a core Kubernetes object."""
    validators = {
        "PyTorchJob": validate_pytorchjob,
        "TrainJob": validate_trainjob,
        "ClusterTrainingRuntime": validate_training_runtime,
        "TrainingRuntime": validate_training_runtime,
    }
    validators.get(obj.get("kind"), validate_core)(obj)
