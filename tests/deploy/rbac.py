"""What the operator's requests need from RBAC, and what RBAC rules grant (pure).

    needed = permissions(calls)            # {(scope, apiGroup, resource[/subresource], verb)} of the operator
    granted = grants(rules)                # {(apiGroup, resource, verb)} of a Role/ClusterRole's rules

A request is the operator's when its User-Agent is kopf's or the launcher's
(olmo_operator.__main__.USER_AGENT).
Discovery GETs (/api, /apis, /apis/<group>/<version>) need no grant: every authenticated user may read
them (the built-in system:discovery ClusterRole).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from olmo_operator.__main__ import USER_AGENT
from tests.operator.kube import Call

Permission = tuple[str, str, str]
"""(apiGroup, resource or resource/subresource, verb), as RBAC spells them."""
_VERBS = {
    "CREATE": "create",
    "DELETE": "delete",
    "FETCH": "get",
    "LIST": "list",
    "WATCH": "watch",
    "PUT": "update",
}
OPERATOR_AGENTS = ("kopf/", USER_AGENT.split("/")[0] + "/")


def is_operator(call: Call) -> bool:
    return call.agent.startswith(OPERATOR_AGENTS)


def verb(call: Call) -> str:
    """The RBAC verb of a request: kmock's UPDATE is a PATCH (patch) or a PUT (update)."""
    if call.action == "UPDATE":
        return "update" if call.method == "PUT" else "patch"
    return _VERBS[call.action]


def is_discovery(call: Call) -> bool:
    return call.group is None and call.resource.startswith("/api") and call.action in ("GET", "LIST", "FETCH")


def permissions(calls: Iterable[Call]) -> set[tuple[str, Permission]]:
    """(scope, permission) of every operator request; scope is "namespace" or "cluster" (no namespace in the
    URL)."""
    needed: set[tuple[str, Permission]] = set()
    for call in calls:
        if not is_operator(call) or is_discovery(call):
            continue
        assert call.group is not None, f"a request the RBAC cannot describe: {call}"
        resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        needed.add(("namespace" if call.namespace else "cluster", (call.group, resource, verb(call))))
    return needed


def grants(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every (group, resource, verb) the rules allow; wildcards and resourceNames are refused outright."""
    granted: set[Permission] = set()
    for rule in rules:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key}: {rule}"
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted
