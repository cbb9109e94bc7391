"""The Pod Security Standards' "restricted" profile (Kubernetes' pod-security admission, policy version
latest), as rules over a pod spec: what a namespace labelled pod-security.kubernetes.io/enforce=restricted
(as Kubeflow profile namespaces may be) would reject. Written from the standard's table, one check per
control; `restricted_violations` returns what the admission would report, empty when it admits the pod."""

from __future__ import annotations

BASELINE_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}


def _containers(pod: dict) -> list[tuple[str, dict]]:
    return [
        (f"{kind} {c.get('name', '?')}", c)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for c in pod.get(kind, [])
    ]


def restricted_violations(pod: dict) -> list[str]:
    """Violations of the restricted profile by a pod spec (`spec` of a Pod or of a pod template)."""
    found: list[str] = []
    pod_context = pod.get("securityContext", {}) or {}
    containers = _containers(pod)
    # baseline controls
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"{field}=true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= BASELINE_VOLUME_TYPES:
            found.append(f"volume {volume.get('name')} uses {sorted(kinds - BASELINE_VOLUME_TYPES)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')}")
    for where, container in containers:
        context = container.get("securityContext", {}) or {}
        if context.get("privileged"):
            found.append(f"{where}: privileged")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{where}: hostPort")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount {context['procMount']}")
        # restricted controls
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation != false")
        capabilities = context.get("capabilities", {}) or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where}: capabilities.drop does not include ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: capabilities.add {sorted(set(capabilities['add']) - {'NET_BIND_SERVICE'})}")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{where}: runAsNonRoot != true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{where}: runAsUser=0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_ALLOWED:
            found.append(f"{where}: seccompProfile.type {seccomp!r} (RuntimeDefault or Localhost)")
    if pod_context.get("runAsUser") == 0:
        found.append("pod runAsUser=0")
    if (pod_context.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("pod seccompProfile Unconfined")
    return found
