"""The Helm chart, linted and rendered by the real Helm SDK (helm-python-sdk wraps Helm v4's Go code)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from olmo_operator import __version__, crd, settings
from olmo_operator.pod_security import restricted_problems
from olmo_operator.settings import Settings
from tests.deploy import chart

DIGEST = "sha256:" + "ab" * 32
CUSTOM: dict[str, Any] = {
    "watchNamespaces": ["research", "prod"],
    "image": {"repository": "registry.example/olmorun-operator", "digest": DIGEST, "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "pull"}],
    "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"memory": "2Gi"}},
    "resyncSeconds": 12.5,
    "requestTimeoutSeconds": 20,
    "logLevel": "DEBUG",
    "metrics": {
        "enabled": True,
        "port": 9200,
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
    "nodeSelector": {"pool": "system"},
    "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
    "podDisruptionBudget": {"enabled": True},
    "trainer": {"networkPolicy": {"enabled": True, "storagePorts": [443, 8333]}},
}


def env_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = chart.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_helm_lint_strict_is_clean() -> None:
    for values in ({}, CUSTOM):
        report = helm.lint(str(chart.CHART), values, strict=True, kube_version="v1.30.0")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_chart_versions_follow_the_package_and_crds_are_the_generated_ones() -> None:
    loaded = chart.load()
    assert loaded.metadata["appVersion"] == __version__ and loaded.metadata["version"] == __version__
    crds = loaded.crds
    assert [c["name"] for c in crds] == [f"crds/{crd.CRD_NAME}.yaml"]
    assert crds[0]["data"] == crd.render_crd()  # what `helm install` applies is what `olmorun crd` generates
    assert yaml.safe_load(crds[0]["data"]) == crd.build_crd()


@pytest.mark.parametrize("values", [{}, CUSTOM], ids=["default", "custom"])
def test_every_rendered_object_is_valid_and_the_pod_restricted(values: dict[str, Any]) -> None:
    objects = chart.render(values)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":  # a prometheus-operator CRD: no built-in schema to check against
            continue
        kubernetes_validate.validate(obj, "1.30", strict=True)
    assert restricted_problems(chart.find(objects, "Deployment")["spec"]["template"]) == []


def test_default_values_serve_every_namespace_with_a_cluster_role() -> None:
    objects = chart.render()
    assert {o["kind"] for o in objects} == {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Secret",
        "ValidatingWebhookConfiguration",
    }
    env = env_of(objects)
    assert env["OLMORUN_NAMESPACES"] == "" and env["OLMORUN_RESYNC_SECONDS"] == "30"
    container = chart.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/olmorun/operator:{__version__}"
    binding = chart.find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "olmorun-operator", "namespace": "olmorun-system"}
    ]


def test_the_default_values_give_the_operators_own_defaults_and_every_cluster_setting_is_a_value() -> None:
    """The chart sets every operator setting that means something in a cluster (settings.py's table), and
    its defaults are the operator's: a chart default drifting from the code's would change behaviour
    between `helm install` and `python -m olmo_operator` silently. Not chart values: OLMORUN_SCHEDULER
    (always kubernetes in a cluster), OLMORUN_KUBE_SERVER (tests) and OLMORUN_PEERING (one replica,
    Recreate). One intended difference: the chart serves the admission webhook (it makes its
    certificate), a bare `python -m olmo_operator` does not."""
    env = env_of(chart.render())
    assert Settings.from_env(env) == dataclasses.replace(Settings(), webhook_port=9443)
    cluster_settings = set(re.findall(r"^\| (OLMORUN_[A-Z_]+)", settings.__doc__ or "", re.MULTILINE))
    assert cluster_settings - set(env) == {"OLMORUN_SCHEDULER", "OLMORUN_KUBE_SERVER", "OLMORUN_PEERING"}


def test_custom_values_reach_the_objects() -> None:
    objects = chart.render(CUSTOM)
    deployment = chart.find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"registry.example/olmorun-operator@{DIGEST}"  # the digest wins over any tag
    assert container["imagePullPolicy"] == "Always" and pod["imagePullSecrets"] == [{"name": "pull"}]
    # Helm merges maps with the defaults: the default cpu limit stays unless set to null.
    assert container["resources"] == {
        "requests": {"cpu": "200m", "memory": "300Mi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    assert pod["nodeSelector"] == {"pool": "system"} and pod["tolerations"] == CUSTOM["tolerations"]
    env = env_of(objects)
    assert env["OLMORUN_NAMESPACES"] == "research,prod" and env["OLMORUN_RESYNC_SECONDS"] == "12.5"
    assert env["OLMORUN_LOG_LEVEL"] == "DEBUG" and env["OLMORUN_METRICS_PORT"] == "9200"
    assert Settings.from_env(env).request_timeout_seconds == 20
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert chart.find(objects, "Service", "olmorun-operator-metrics")["spec"]["ports"][0]["port"] == 9200
    assert chart.find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1

    # Named namespaces: a Role and RoleBinding in each, only namespaces in the ClusterRole.
    for namespace in ("research", "prod"):
        role = chart.find(objects, "Role", namespace=namespace)
        assert {r["resources"][0] for r in role["rules"]} >= {"olmoruns", "jobs"}
        binding = chart.find(objects, "RoleBinding", namespace=namespace)
        assert binding["subjects"][0]["namespace"] == "olmorun-system"
        assert (
            chart.find(objects, "ServiceAccount", "olmorun-trainer", namespace)[
                "automountServiceAccountToken"
            ]
            is False
        )
        policy = chart.find(objects, "NetworkPolicy", namespace=namespace)
        assert {"protocol": "TCP", "port": 8333} in policy["spec"]["egress"][2]["ports"]
    cluster_role = chart.find(objects, "ClusterRole")
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"], ["namespaces"]]


def test_service_monitor_is_rendered_only_where_the_monitoring_api_exists() -> None:
    """helm-python-sdk renders offline with Helm's default capabilities (no monitoring.coreos.com): the
    ServiceMonitor asked for is left out rather than failing the install. Its template is checked below."""
    assert not [o for o in chart.render(CUSTOM) if o["kind"] == "ServiceMonitor"]
    template = (chart.CHART / "templates" / "servicemonitor.yaml").read_text()
    assert (
        '.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor"' in template.splitlines()[0]
    )


def test_metrics_off_removes_the_service_and_the_port() -> None:
    objects = chart.render({"metrics": {"enabled": False}})
    assert not [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics")]
    assert env_of(objects)["OLMORUN_METRICS_PORT"] == "0"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"resyncSeconds": "often"}, "resyncSeconds"),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"image": {"repository": "r", "digest": "sha256:short"}}, "digest"),
        ({"image": {"repository": "r", "tag": "latest"}}, "tag"),
        ({"watchNamespaces": "research"}, "watchNamespaces"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"replicas": 2}, "replicas"),
    ],
)
def test_schema_invalid_values_are_refused_naming_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        chart.render(values)
    assert key in str(refused.value)


def test_the_webhook_is_served_by_the_operator_behind_a_service_with_its_own_certificate() -> None:
    """The ValidatingWebhookConfiguration calls the operator's handler path through the Service, over a
    certificate whose CA it carries; the operator mounts that certificate; failurePolicy is Ignore (the
    operator re-validates every spec before any job, and a run stays deletable when the operator is
    gone). With cert-manager, a Certificate and the CA injection replace the Helm-made Secret."""
    import base64

    from cryptography import x509

    from olmo_operator.handlers import WEBHOOK_ID

    objects = chart.render()
    (hook,) = chart.find(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "apiGroups": ["olmorun.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["olmoruns"],
            "scope": "Namespaced",
        }
    ]
    client = hook["clientConfig"]
    assert client["service"]["path"] == f"/{WEBHOOK_ID}"
    service = chart.find(objects, "Service", client["service"]["name"])
    pod = chart.find(objects, "Deployment")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "webhook" and env_of(objects)[
        "OLMORUN_WEBHOOK_PORT"
    ] == str(ports["webhook"])
    secret = chart.find(objects, "Secret")
    assert {"secret": {"secretName": secret["metadata"]["name"]}, "name": "webhook-tls"} in pod["volumes"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(client["caBundle"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"{client['service']['name']}.olmorun-system.svc" in names

    managed = chart.render({"webhook": {"certManager": {"enabled": True}, "failurePolicy": "Fail"}})
    kinds = {o["kind"] for o in managed}
    assert {"Issuer", "Certificate"} <= kinds and "Secret" not in kinds
    config = chart.find(managed, "ValidatingWebhookConfiguration")
    assert (
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == "olmorun-system/olmorun-operator-webhook"
    )
    assert (
        "caBundle" not in config["webhooks"][0]["clientConfig"]
        and config["webhooks"][0]["failurePolicy"] == "Fail"
    )
    off = chart.render({"webhook": {"enabled": False}})
    assert not {"Secret", "ValidatingWebhookConfiguration"} & {o["kind"] for o in off}
    assert env_of(off)["OLMORUN_WEBHOOK_PORT"] == "0"
