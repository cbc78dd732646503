"""`helm upgrade` from the first published chart to this one, with the real Helm SDK against the emulated
API server (Helm's own release storage, in memory).

tests/deploy/charts/olmorun-0.1.0.tgz is the first chart as it was committed (5a32bf4), packaged with
the Helm SDK: operator image `ghcr.io/olmorun/olmorun-operator`, no request timeout, no webhook.
`--reuse-values` renders the new templates with the previous chart's values (helm/helm#9000: Helm reuses
the old release's chart values), which lack what the new chart added: the upgrade cannot render (and with
a nil-safe template would run the old image name with a null timeout). `--reset-then-reuse-values`
(Helm >= 3.14), what the README says, takes the new chart's defaults and keeps what the user set.

helm-python's `Config.install/upgrade` pass only some of the options its native library (helm-c) takes;
`release()` calls the same native action with two more that the library reads: `reset_then_reuse_values`
(the flag itself) and `disable_openapi_validation` (the emulator serves no OpenAPI document; every object
is validated against the Kubernetes 1.30 schemas by tests/deploy/test_chart.py instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kmock
import pytest
import yaml
from helm_python import _native

from olmo_operator.settings import Settings
from tests.deploy import chart
from tests.operator.kube import KubeServer

# The emulator has no OpenAPI document (validation is tests/deploy/test_chart.py's) and no server-side
# apply (a PATCH never creates); helm-c's upgrade takes server_side_apply as "true|false|auto".
NATIVE_OPTIONS: dict[str, dict[str, Any]] = {
    "install": {"disable_openapi_validation": True, "server_side_apply": False},
    "upgrade": {"disable_openapi_validation": True, "server_side_apply": "false"},
}
FIRST_CHART = Path(__file__).parent / "charts" / "olmorun-0.1.0.tgz"
USER_VALUES = {"extraEnv": [{"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"}]}
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
KINDS = {  # what the chart creates, served by the emulator as a cluster would
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("", "v1", "serviceaccounts"): ("ServiceAccount", True),
    ("", "v1", "services"): ("Service", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles"): ("ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings"): ("ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "v1", "roles"): ("Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"): ("RoleBinding", True),
    ("policy", "v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True),
    ("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations"): (
        "ValidatingWebhookConfiguration",
        False,
    ),
}


@pytest.fixture(name="helm_cluster")
def helm_cluster_fixture() -> Iterator[helm.Config]:
    with KubeServer([], namespaces=("default", chart.NAMESPACE)) as kube:  # Helm installs the CRD
        for (group, version, plural), (kind, namespaced) in KINDS.items():
            kube.emulator.declare(
                kmock.resource(group, version, plural),
                kmock.ResourceInfo(kind=kind, verbs=VERBS, namespaced=namespaced),
            )
        with helm.Config(kube_apiserver=kube.url, namespace=chart.NAMESPACE, storage_driver="memory") as cfg:
            yield cfg


def _operator(release: dict[str, Any]) -> dict[str, Any]:
    """The operator container of a release's rendered manifest."""
    objects = [o for o in yaml.safe_load_all(release["manifest"]) if o]
    return chart.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def release(
    cfg: helm.Config, action: str, release_chart: helm.Chart, values: dict[str, Any] | None, **options: Any
) -> dict[str, Any]:
    """helm install|upgrade RELEASE CHART with `values` and the native library's own options."""
    payload = _native.call_string(
        f"helm_{action}",
        cfg._raw(),
        _native.HANDLE(0),  # no cancellation context
        release_chart._raw(),
        None,
        chart.RELEASE,
        None if values is None else json.dumps(values),
        json.dumps({"namespace": chart.NAMESPACE, **NATIVE_OPTIONS[action], **options}),
    )
    result: dict[str, Any] = json.loads(payload)
    return result


def test_an_upgrade_from_the_first_chart_takes_the_new_defaults_and_keeps_the_users_values(
    helm_cluster: helm.Config,
) -> None:
    first = helm.Chart.load_archive(FIRST_CHART.read_bytes())
    assert first.version == "0.1.0"
    installed = release(helm_cluster, "install", first, USER_VALUES)
    old = _operator(installed)
    assert old["image"].startswith("ghcr.io/olmorun/olmorun-operator:")
    assert "OLMORUN_REQUEST_TIMEOUT_SECONDS" not in {e["name"] for e in old.get("env", [])}

    current = chart.load()
    # The trap the README avoids: --reuse-values renders the new templates with the old chart's values,
    # which lack what the new chart added (the webhook block), so this upgrade cannot even render.
    with pytest.raises(helm.HelmReleaseError, match="webhook"):
        release(helm_cluster, "upgrade", current, None, reuse_values=True)

    # A fresh load, as the CLI does: Helm's --reuse-values writes the old defaults into the chart it is
    # given (pkg/action/upgrade.go, reuseValues: chart.Values = oldVals).
    upgraded = release(helm_cluster, "upgrade", chart.load(), None, reset_then_reuse_values=True)
    container = _operator(upgraded)
    # Exactly what a fresh install of the new chart with the user's values runs.
    fresh = chart.find(chart.render(USER_VALUES), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container == fresh
    assert container["image"].startswith("ghcr.io/olmorun/operator:")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert float(env["OLMORUN_REQUEST_TIMEOUT_SECONDS"]) == Settings().request_timeout_seconds
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"  # what the user set survives
    assert (upgraded["revision"], upgraded["status"]) == (2, "deployed")
    assert upgraded["chart_version"] == current.version


def test_the_chart_packages_and_its_changelog_names_its_version(tmp_path: Path) -> None:
    """`helm package`: the archive renders exactly what the folder renders; CHANGELOG.md has an entry
    for the chart's version."""
    current = chart.load()
    archive = Path(current.save(tmp_path))
    assert archive.name == f"olmorun-{current.version}.tgz"
    packaged = helm.Chart.load_archive(archive.read_bytes())
    same = {"webhook": {"enabled": False}}  # the webhook's certificate is made anew at each rendering
    assert packaged.render(same, name=chart.RELEASE, namespace=chart.NAMESPACE, is_install=True) == (
        current.render(same, name=chart.RELEASE, namespace=chart.NAMESPACE, is_install=True)
    )
    assert {t["name"] for t in packaged.templates} == {t["name"] for t in current.templates}
    changelog = (chart.CHART / "CHANGELOG.md").read_text()
    assert f"## {current.version}" in changelog
    assert "CHANGELOG.md" in {f["name"] for f in packaged.files}  # shipped inside the package
