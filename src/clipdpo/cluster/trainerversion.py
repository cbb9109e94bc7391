"""Refuse, before creating it, a TrainJob that the installed Kubeflow Trainer would misread.

A TrainJob carries its pods' ServiceAccount, volumes (/dev/shm, scratch) and restricted security context in
`spec.runtimePatches`, which Kubeflow Trainer v2.2.0 brought (v2.1 had `podTemplateOverrides` instead).
An API server drops the fields a CRD does not declare unless asked to be strict, so on an older Trainer the
job would be created and its pods would start without them, failing far from the cause (a pod-security
refusal, NCCL out of shared memory). Two checks, each ending in one line that says what to do:

1. The version the Trainer publishes: since v2.2.0 its ConfigMap `kubeflow-trainer-public` (key
   `kubeflow_trainer_version`, e.g. "v2.3.0") in the Trainer's namespace, which every authenticated user may
   read (the Trainer's own Role and RoleBinding), so the launcher needs no permission of ours for it.
   Older than trainjob.MIN_TRAINER_VERSION: TrainerTooOld, naming both versions, before anything is created.
2. The create itself asks for strict field validation (follow.py): a served CRD without a field the job
   sets is refused by the API server, not silently pruned. That covers a Trainer too old to publish its
   version (no ConfigMap) and one installed in a namespace not searched here.
"""

from __future__ import annotations

import logging
import re

from clipdpo.cluster.trainjob import MIN_TRAINER_VERSION
from clipdpo.errors import UserError

log = logging.getLogger("clipdpo.cluster")
PUBLIC_CONFIGMAP = "kubeflow-trainer-public"
VERSION_KEY = "kubeflow_trainer_version"
# Where the Trainer's manifests install it: the standalone overlay (kubeflow-system), the Kubeflow platform's.
TRAINER_NAMESPACES = ("kubeflow-system", "kubeflow")


class TrainerTooOld(UserError):
    """The installed Kubeflow Trainer cannot run the TrainJob this launcher builds."""


def version_text(version: tuple[int, ...]) -> str:
    return "v" + ".".join(map(str, version))


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a published version such as "v2.3.0" or "v2.2.0-rc.1"; None for a build
    without a release number (the Trainer chart publishes "dev" for its development versions)."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def published_version(core_api, namespaces: tuple[str, ...] = TRAINER_NAMESPACES) -> tuple[str, str] | None:
    """(namespace, version) from the first of `namespaces` whose Trainer publishes one; None when none does
    (a Trainer older than v2.2.0, one installed elsewhere, or the ConfigMap unreadable)."""
    for namespace in namespaces:
        try:
            config_map = core_api.read_namespaced_config_map(PUBLIC_CONFIGMAP, namespace)  # a V1ConfigMap
        except Exception as err:  # kubernetes.client.ApiException: 404 not here, 403 not readable
            log.debug("no %s/%s: %s", namespace, PUBLIC_CONFIGMAP, getattr(err, "status", err))
            continue
        version = (config_map.data or {}).get(VERSION_KEY, "")
        if version:
            return namespace, version
    return None


def check_trainer(core_api, namespaces: tuple[str, ...] = TRAINER_NAMESPACES) -> str:
    """Raise TrainerTooOld when the published Trainer version is older than the TrainJob needs; returns the
    version found ('' when none is published: the strict create is then the check)."""
    found = published_version(core_api, namespaces)
    needed = version_text(MIN_TRAINER_VERSION)
    if found is None:
        log.warning(
            "no Kubeflow Trainer version published (ConfigMap %s in %s): a Trainer older than v2.2.0 publishes "
            "none; the TrainJob is created with strict field validation, so one older than %s refuses it",
            PUBLIC_CONFIGMAP,
            " or ".join(namespaces),
            needed,
        )
        return ""
    namespace, version = found
    parsed = parse_version(version)
    if parsed is not None and parsed < MIN_TRAINER_VERSION:
        raise TrainerTooOld(
            f"Kubeflow Trainer {version} is installed (ConfigMap {namespace}/{PUBLIC_CONFIGMAP}); the TrainJob "
            f"this launcher builds needs {needed} or newer (spec.runtimePatches): upgrade the Trainer, or "
            "launch with --launcher pytorchjob"
        )
    log.info("Kubeflow Trainer %s (%s/%s)", version, namespace, PUBLIC_CONFIGMAP)
    return version
