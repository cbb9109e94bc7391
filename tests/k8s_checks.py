"""Offline schema checks for Kubernetes objects.

Core objects: kubernetes-validate (the Kubernetes OpenAPI JSON schemas, strict: unknown fields
fail). PyTorchJob: walked field by field against the Kubeflow training SDK's generated models
(`openapi_types` / `attribute_map`, from the CRD's OpenAPI), unknown keys and wrong primitive
types fail; each replica's pod template is then validated as a core v1 PodTemplate.
"""

from __future__ import annotations

import re

import kubernetes_validate

K8S_VERSION = "1.37.0"
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
CLEAN_POD_POLICIES = {"None", "Running", "All"}
REPLICA_TYPES = {"Master", "Worker"}


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
        assert isinstance(value, primitives[type_name]) and not (type_name == "int" and isinstance(value, bool)), \
            f"{where}: expected {type_name}, got {value!r}"
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
    for where, template in templates:
        validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                       "template": template})
