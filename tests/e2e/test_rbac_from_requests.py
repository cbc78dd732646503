"""RBAC equals what the operator really sends: the requests recorded by the emulator in the kmock e2e tests.

tests/e2e/test_operator_kmock.py runs first in a full session (same folder, earlier name); every emulator
appends its request log to tests.operator.kube.REQUEST_LOG when it stops. Run alone, this test runs those
scenarios itself, so it never judges an empty log. The chart's rules (manifests/chart/olmorun, the same
the plain manifests are generated from) must grant every permission used and none never used, in both
install modes: every namespace (a ClusterRole) and named namespaces (Roles, plus a ClusterRole for what is
cluster-scoped).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from olmo_operator import api, request
from olmo_operator.crd import build_crd
from tests.deploy import chart
from tests.deploy.rbac import Permission, grants, is_operator, permissions
from tests.e2e import test_operator_kmock as scenarios
from tests.operator.kube import REQUEST_LOG, Call, KubeServer

ROOT = Path(__file__).parents[2]
# run name -> the scenario of test_operator_kmock.py that submits it (each covers requests the others do not:
# the lifecycle deletes jobs and posts events, the retry lists a failed job's pods, one operator is
# namespaced).
SCENARIOS: dict[str, Callable[..., None]] = {
    "life": scenarios.test_run_lifecycle_jobs_phases_events_and_delete,
    "flaky": scenarios.test_failed_job_is_retried_after_backoff,
}


def _sessions(tmp_path: Path) -> list[list[Call]]:
    """The recorded request logs, after running any scenario that did not run in this session."""
    seen = {c.name for log in REQUEST_LOG for c in log}
    for name, scenario in SCENARIOS.items():
        if name not in seen:
            with KubeServer([build_crd()]) as kube:
                scenario(
                    kube=kube,
                    kubectl=scenarios.kubernetes.client.CustomObjectsApi(kube.api_client()),
                    tmp_path=tmp_path / name,
                )
    if "inside" not in seen:
        scenarios.test_namespaced_operator_ignores_other_namespaces(tmp_path / "inside")
    return [log for log in REQUEST_LOG if any(is_operator(c) for c in log)]


def _clusterwide(log: list[Call]) -> bool:
    """An operator serving every namespace watches OlmoRuns across all of them (no namespace in the URL)."""
    return any(
        is_operator(c) and c.resource == api.PLURAL and c.action == "WATCH" and c.namespace is None
        for c in log
    )


def _implied() -> set[Permission]:
    """Permissions checked by admission rather than requested: a Job naming its OlmoRun as owner with
    blockOwnerDeletion needs `update` on olmoruns/finalizers (OwnerReferencesPermissionEnforcement)."""
    body = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())
    body["metadata"]["uid"] = "0000"
    owner = request.owner_reference(api.parse_olmorun(body)).to_kubernetes()
    return {(api.GROUP, f"{api.PLURAL}/finalizers", "update")} if owner.get("blockOwnerDeletion") else set()


def _rules(objects: list[dict[str, Any]], kind: str, namespace: str | None = None) -> set[Permission]:
    return grants(chart.find(objects, kind, namespace=namespace)["rules"])


def test_rbac_grants_exactly_what_the_operator_sends(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    clusterwide = [log for log in sessions if _clusterwide(log)]
    namespaced = [log for log in sessions if not _clusterwide(log)]
    assert clusterwide and namespaced, "the e2e scenarios ran no operator of each kind"
    implied = _implied()
    assert implied, "the launcher no longer sets blockOwnerDeletion: drop olmoruns/finalizers from the chart"

    # Every namespace: one ClusterRole.
    used = {perm for log in clusterwide for _, perm in permissions(log)} | implied
    granted = _rules(chart.render(), "ClusterRole")
    assert used - granted == set(), (
        f"the operator sends requests its ClusterRole does not allow: {used - granted}"
    )
    assert granted - used == set(), f"the ClusterRole grants what the operator never uses: {granted - used}"

    # Named namespaces: in each, a Role for everything namespaced the operator does anywhere; a ClusterRole
    # for the cluster-scoped requests of the namespaced operators (and nothing across namespaces).
    objects = chart.render({"watchNamespaces": ["default"]})
    in_namespace = {
        perm for log in sessions for scope, perm in permissions(log) if scope == "namespace"
    } | implied
    role = _rules(objects, "Role", namespace="default")
    assert role == in_namespace, (
        f"Role grants {role - in_namespace or '-'} unused, lacks {in_namespace - role or '-'}"
    )
    cluster_scoped = {perm for log in namespaced for scope, perm in permissions(log) if scope == "cluster"}
    cluster_role = _rules(objects, "ClusterRole")
    assert cluster_role == cluster_scoped, f"namespaced ClusterRole {cluster_role} != used {cluster_scoped}"
    assert not any(r == api.PLURAL for _, r, _ in cluster_role), (
        "a namespaced operator must not read every namespace's runs"
    )


def test_permissions_tell_patch_from_update_and_skip_discovery() -> None:
    agent = "kopf/1.45.2"
    calls = [
        Call("UPDATE", "olmoruns", "ns", "r", "status", agent, 0.0, "PATCH", "olmorun.dev"),
        Call("UPDATE", "olmoruns", "ns", "r", None, agent, 0.0, "PUT", "olmorun.dev"),
        Call("GET", "/apis", None, None, None, agent, 0.0, "GET", None),
        Call("LIST", "olmoruns", None, None, None, agent, 0.0, "GET", "olmorun.dev"),
        Call("CREATE", "olmoruns", "ns", "r", None, "olmorun-tests", 0.0, "POST", "olmorun.dev"),
    ]
    assert permissions(calls) == {
        ("namespace", ("olmorun.dev", "olmoruns/status", "patch")),
        ("namespace", ("olmorun.dev", "olmoruns", "update")),
        ("cluster", ("olmorun.dev", "olmoruns", "list")),
    }
