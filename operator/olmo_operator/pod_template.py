"""A tenant's `spec.cluster.podTemplate`: a strategic-merge overlay onto every training pod (pure).

    pod = merge_pod_template(pod, {"metadata": {...}, "spec": {"containers": [{"name": "trainer", ...}]}})
    problems = template_problems(overlay)      # [(field path, message)], [] when the overlay is allowed

What a Kubeflow Trainer user writes in `podTemplateOverrides` and a JobSet user in its Job templates:
env (NCCL_*, proxies), volumes and their mounts (a PVC dataset, a cache), resources of any name
(`rdma/ib`, `vpc.amazonaws.com/efa`), pod labels and annotations (Kueue, cost tags), imagePullSecrets,
tolerations and the rest of core/v1 PodSpec. The container named `trainer` is the training container;
another name adds a container (a sidecar).

Merging follows Kubernetes' strategic merge patch for these types (k8s.io/api/core/v1 types.go,
`patchMergeKey`): maps merge recursively, a list with a merge key merges item by item on that key
(containers, volumes, env and imagePullSecrets by name, volumeMounts by mountPath, ports by
containerPort), any other list is replaced, except two that only grow: `envFrom` (the operator's Secret
references stay) and `tolerations` (the spec's own `cluster.tolerations` stay).

The result must still meet the Pod Security "restricted" profile (pod_security.py), which is the
default of every namespace the chart prepares: a spec alone can never add a capability or a hostPath.
Fields that are the operator's own (the image, the command, the container's name) cannot be set here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from olmo_operator.pod_security import restricted_problems

TRAINER = "trainer"
"""The name a podTemplate gives the training container (each pod has one; its real name is per replica)."""

POD_SPEC_FIELDS = frozenset(
    [
        "activeDeadlineSeconds",
        "affinity",
        "automountServiceAccountToken",
        "containers",
        "dnsConfig",
        "dnsPolicy",
        "enableServiceLinks",
        "ephemeralContainers",
        "hostAliases",
        "hostIPC",
        "hostNetwork",
        "hostPID",
        "hostUsers",
        "hostname",
        "imagePullSecrets",
        "initContainers",
        "nodeName",
        "nodeSelector",
        "os",
        "overhead",
        "preemptionPolicy",
        "priority",
        "priorityClassName",
        "readinessGates",
        "resourceClaims",
        "resources",
        "restartPolicy",
        "runtimeClassName",
        "schedulerName",
        "schedulingGates",
        "securityContext",
        "serviceAccount",
        "serviceAccountName",
        "setHostnameAsFQDN",
        "shareProcessNamespace",
        "subdomain",
        "terminationGracePeriodSeconds",
        "tolerations",
        "topologySpreadConstraints",
        "volumes",
    ]
)
"""core/v1 PodSpec's fields, Kubernetes 1.30 (k8s.io/api/core/v1 types.go, PodSpec)."""
CONTAINER_FIELDS = frozenset(
    [
        "args",
        "command",
        "env",
        "envFrom",
        "image",
        "imagePullPolicy",
        "lifecycle",
        "livenessProbe",
        "name",
        "ports",
        "readinessProbe",
        "resizePolicy",
        "resources",
        "restartPolicy",
        "securityContext",
        "startupProbe",
        "stdin",
        "stdinOnce",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "tty",
        "volumeDevices",
        "volumeMounts",
        "workingDir",
    ]
)
"""core/v1 Container's fields, Kubernetes 1.30 (k8s.io/api/core/v1 types.go, Container)."""
OPERATOR_OWNED_POD = frozenset({"restartPolicy", "serviceAccount", "serviceAccountName", "nodeName"})
"""Pod fields the operator sets from the spec or Volcano needs: set them with `cluster.*` fields."""
OPERATOR_OWNED_TRAINER = frozenset({"image", "command", "args"})
"""The training container's fields that are the run's (spec.image) and the trainer's entry point."""

MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
"""`patchMergeKey` of the PodSpec and Container lists (k8s.io/api/core/v1 types.go)."""
APPENDED = frozenset({"envFrom", "tolerations"})
"""Lists an overlay extends and never replaces: what the operator put there stays."""


def merge_pod_template(pod: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`pod` ({metadata, spec}, its first container the trainer's) with `overlay` merged in; a new dict.

    The overlay's container named `trainer` merges into the pod's first container, whatever its name."""
    merged = copy.deepcopy(dict(pod))
    overlay = copy.deepcopy(dict(overlay))
    containers = merged.get("spec", {}).get("containers") or []
    for container in (overlay.get("spec") or {}).get("containers") or []:
        if container.get("name") == TRAINER and containers:
            container["name"] = containers[0]["name"]
    return _merge(merged, overlay)


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            merged[name] = _merge(base.get(name), value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        if key in APPENDED:
            return base + [item for item in patch if item not in base]
        merge_key = MERGE_KEYS.get(key)
        if merge_key is not None:
            out = list(base)
            for item in patch:
                index = next(
                    (
                        i
                        for i, old in enumerate(out)
                        if isinstance(old, dict) and old.get(merge_key) == item.get(merge_key)
                    ),
                    None,
                )
                if index is None:
                    out.append(item)
                else:
                    out[index] = _merge(out[index], item)
            return out
    return patch


def template_problems(
    overlay: Mapping[str, Any], where: str = "spec.cluster.podTemplate"
) -> list[tuple[str, str]]:
    """Every way an overlay is refused: unknown or operator-owned fields, malformed lists, and a training
    pod that would break the restricted Pod Security profile once the overlay is merged in."""
    problems: list[tuple[str, str]] = []
    metadata = overlay.get("metadata") or {}
    for name in sorted(set(metadata) - {"labels", "annotations"}):
        problems.append((f"{where}.metadata.{name}", "only labels and annotations can be set here"))
    for name in ("labels", "annotations"):
        values = metadata.get(name) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            problems.append((f"{where}.metadata.{name}", "must map names to strings"))
    spec = overlay.get("spec") or {}
    if not isinstance(spec, dict):
        return [*problems, (f"{where}.spec", "must be a core/v1 PodSpec fragment (a map)")]
    problems += _unknown(spec, POD_SPEC_FIELDS, f"{where}.spec", "PodSpec")
    problems += [
        (f"{where}.spec.{name}", "is the operator's; use spec.cluster instead")
        for name in sorted(OPERATOR_OWNED_POD & set(spec))
    ]
    for kind in ("containers", "initContainers", "ephemeralContainers"):
        items = spec.get(kind) or []
        if not isinstance(items, list):
            problems.append((f"{where}.spec.{kind}", "must be a list of containers"))
            continue
        for i, container in enumerate(items):
            here = f"{where}.spec.{kind}[{i}]"
            if not isinstance(container, dict) or not container.get("name"):
                problems.append((here, "a container needs a name (`trainer` for the training container)"))
                continue
            problems += _unknown(container, CONTAINER_FIELDS, here, "Container")
            if kind == "containers" and container["name"] == TRAINER:
                problems += [
                    (f"{here}.{name}", "is the run's (spec.image) or the trainer's entry point")
                    for name in sorted(OPERATOR_OWNED_TRAINER & set(container))
                ]
    for name, merge_key in MERGE_KEYS.items():
        problems += _keyed(spec.get(name), merge_key, f"{where}.spec.{name}")
    if problems:
        return problems
    pod = merge_pod_template(_REPRESENTATIVE_POD, overlay)
    for problem in restricted_problems(pod):
        path, _, message = problem.partition(": ")
        path = path.replace("spec.containers[0]", f"spec.containers[{TRAINER}]")
        problems.append((f"{where}.{path}", f"{message} (Pod Security 'restricted')"))
    return problems


def _unknown(value: Mapping[str, Any], known: frozenset[str], where: str, kind: str) -> list[tuple[str, str]]:
    return [
        (f"{where}.{name}", f"{kind} has no field {name!r} (Kubernetes 1.30)")
        for name in sorted(set(value) - known)
    ]


def _keyed(items: Any, merge_key: str, where: str) -> list[tuple[str, str]]:
    if items is None:
        return []
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and i.get(merge_key) is not None for i in items
    ):
        return [(where, f"must be a list whose items each have {merge_key!r}")]
    return []


_REPRESENTATIVE_POD: dict[str, Any] = {
    "metadata": {"labels": {}},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "trainer-0",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    },
}
"""The security-relevant part of every training pod (launcher_volcano's POD_SECURITY and
CONTAINER_SECURITY; a test keeps the two equal)."""
