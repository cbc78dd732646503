"""Pod Security Standards, profile "restricted" (Kubernetes v1.30), as a pure check of a pod spec.

    problems = restricted_problems(deployment["spec"]["template"])      # [] when the pod is admitted

The rules are the policy table of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(baseline controls plus the restricted ones); no library on PyPI implements them offline, and a
namespace's admission (the real judge) sees a pod only after its Job was created. The operator checks
every training pod a spec's `cluster.podTemplate` would make (pod_template.py), and the tests check the
chart's pods. Each problem names the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
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
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [
        (f"spec.{kind}[{i}]", c)
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for i, c in enumerate(spec.get(kind) or [])
    ]


def restricted_problems(template: Mapping[str, Any]) -> list[str]:
    """Every way a pod template ({metadata, spec}) breaks the restricted profile; [] when it meets it."""
    spec: Mapping[str, Any] = template.get("spec") or {}
    annotations: Mapping[str, str] = (template.get("metadata") or {}).get("annotations") or {}
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    problems = [
        f"spec.{key}: must be unset or false"
        for key in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(key)
    ]
    problems += [
        f"metadata.annotations[{k}]: AppArmor profile {v!r} is not allowed"
        for k, v in annotations.items()
        if k.startswith("container.apparmor.security.beta.kubernetes.io/")
        and v != "runtime/default"
        and not v.startswith("localhost/")
    ]
    for i, volume in enumerate(spec.get("volumes") or []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(
                f"spec.volumes[{i}]: volume type {sorted(kinds - RESTRICTED_VOLUMES)} is not allowed"
            )
    problems += [
        f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl"
        for s in pod_sc.get("sysctls") or []
        if s.get("name") not in SAFE_SYSCTLS
    ]
    problems += _context_problems("spec.securityContext", pod_sc)
    for where, container in _containers(spec):
        sc: Mapping[str, Any] = container.get("securityContext") or {}
        here = f"{where}.securityContext"
        problems += _context_problems(here, sc)
        if sc.get("privileged"):
            problems.append(f"{here}.privileged: must be unset or false")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{here}.procMount: must be Default")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{here}.allowPrivilegeEscalation: must be false")
        if not (
            sc.get("runAsNonRoot") is True
            or (pod_sc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is None)
        ):
            problems.append(f"{here}.runAsNonRoot: must be true (here or in spec.securityContext)")
        profile = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if profile not in ("RuntimeDefault", "Localhost"):
            problems.append(
                f"{here}.seccompProfile.type: must be RuntimeDefault or Localhost (here or in the pod)"
            )
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{here}.capabilities.drop: must include ALL")
        added = set(capabilities.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            problems.append(
                f"{here}.capabilities.add: only NET_BIND_SERVICE is allowed, not "
                f"{sorted(added - {'NET_BIND_SERVICE'})}"
            )
        for j, port in enumerate(container.get("ports") or []):
            if port.get("hostPort"):
                problems.append(f"{where}.ports[{j}].hostPort: must be unset or 0")
    return problems


def _context_problems(here: str, sc: Mapping[str, Any]) -> list[str]:
    """Controls that apply alike to the pod's and to each container's securityContext."""
    problems = []
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append(f"{here}.windowsOptions.hostProcess: must be unset or false")
    if sc.get("runAsUser") == 0:
        problems.append(f"{here}.runAsUser: must not be 0")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{here}.seccompProfile.type: Unconfined is not allowed")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{here}.appArmorProfile.type: Unconfined is not allowed")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{here}.seLinuxOptions: only the container types, with no user or role, are allowed")
    return problems
