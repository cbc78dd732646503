"""The plain manifests (`kubectl apply -k manifests/`): generated from the chart, valid, least privilege,
restricted."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from olmo_operator import crd
from olmo_operator.pod_security import restricted_problems
from tests.deploy import chart

ROOT = Path(__file__).parents[2]
KUBE_VERSION = "1.30"


def kustomized() -> list[dict[str, Any]]:
    """What `kubectl kustomize manifests/` builds (offline; `kubectl apply -k` applies exactly this)."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_committed_plain_manifests_are_the_chart_default_rendering() -> None:
    files = chart.plain_files()
    committed = {
        str(p.relative_to(ROOT / "manifests")): p.read_text()
        for folder in ("operator", "training")
        for p in sorted((ROOT / "manifests" / folder).glob("*.yaml"))
    }
    assert set(committed) == set(files), (
        "run `make manifests` and commit manifests/operator and manifests/training"
    )
    for name, text in files.items():
        assert committed[name] == text, f"manifests/{name} is stale: run `make manifests` and commit it"


def test_kustomization_builds_the_crd_namespace_rbac_and_operator() -> None:
    objects = kustomized()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted(
        [
            ("Namespace", "olmorun-system"),
            ("CustomResourceDefinition", crd.CRD_NAME),
            ("ServiceAccount", "olmorun-operator"),
            ("ClusterRole", "olmorun-operator"),
            ("ClusterRoleBinding", "olmorun-operator"),
            ("Deployment", "olmorun-operator"),
            ("Service", "olmorun-operator-metrics"),
        ]
    )
    assert chart.find(objects, "CustomResourceDefinition") == crd.build_crd()
    namespace = chart.find(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "olmorun-system", obj["kind"]


@pytest.mark.parametrize("folder", ["kustomization", "training"])
def test_every_object_validates_against_kubernetes_1_30_strict(folder: str) -> None:
    objects = (
        kustomized()
        if folder == "kustomization"
        else [
            d
            for p in sorted((ROOT / "manifests" / "training").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text())
            if d
        ]
    )
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_validation_is_strict_about_unknown_fields() -> None:
    """The check above can fail: a misspelt field of a Deployment is refused."""
    deployment = copy.deepcopy(chart.find(kustomized(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_operator_deployment_is_single_recreate_probed_restricted_and_read_only() -> None:
    deployment = chart.find(kustomized(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}  # kopf: no leader election
    pod = spec["template"]["spec"]
    assert restricted_problems(spec["template"]) == []
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "olmo_operator"]
    assert not container["image"].endswith(":latest")
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TMPDIR"] == "/tmp" and env["OLMORUN_NAMESPACES"] == ""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": int(env["OLMORUN_HEALTH_PORT"]), "metrics": int(env["OLMORUN_METRICS_PORT"])}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert pod["serviceAccountName"] == "olmorun-operator"
    assert "OLMORUN_PEERING" not in env, "no peering: kopf runs standalone and needs no peering RBAC"


def test_restricted_check_names_what_a_pod_breaks() -> None:
    template = copy.deepcopy(chart.find(kustomized(), "Deployment")["spec"]["template"])
    container = template["spec"]["containers"][0]
    container["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    container["securityContext"]["allowPrivilegeEscalation"] = True
    template["spec"]["securityContext"].pop("runAsNonRoot")
    container["securityContext"].pop("runAsNonRoot")
    template["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = restricted_problems(template)
    for fault in (
        "capabilities.drop",
        "capabilities.add",
        "allowPrivilegeEscalation",
        "runAsNonRoot",
        "hostPath",
    ):
        assert any(fault in p for p in problems), (fault, problems)


def test_no_secret_access_and_no_wildcards() -> None:
    for obj in kustomized():
        for rule in obj.get("rules", []):
            assert "secrets" not in rule["resources"], "the operator never reads Secrets"
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard in {obj['kind']} {key}"


def test_training_service_account_has_no_token_and_network_policy_selects_run_pods() -> None:
    (account,) = yaml.safe_load_all((ROOT / "manifests/training/serviceaccount.yaml").read_text())
    assert account["automountServiceAccountToken"] is False and "namespace" not in account["metadata"]
    (policy,) = yaml.safe_load_all((ROOT / "manifests/training/networkpolicy.yaml").read_text())
    run_pods = {"matchExpressions": [{"key": "olmorun.dev/run", "operator": "Exists"}]}
    assert policy["spec"]["podSelector"] == run_pods
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": run_pods}]}]
    from olmo_operator.request import LABEL_RUN

    assert run_pods["matchExpressions"][0]["key"] == LABEL_RUN  # the label every training pod carries
