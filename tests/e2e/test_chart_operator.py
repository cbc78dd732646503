"""The operator as the Helm chart deploys it, against the emulated Kubernetes API.

The Deployment's container command and environment come from the chart rendered by the real Helm SDK
and start the operator process unchanged. Two things differ from a pod, by necessity: PATH puts this
virtualenv's `python` first (the image's is /opt/venv/bin/python), and OLMORUN_KUBE_SERVER points at the
emulator, standing in for the in-cluster ServiceAccount config a pod gets (no API server runs here).
The ports are chosen free on this machine through the chart's own values. The admission webhook is
served with the certificate the chart made (its Secret's files, as the pod mounts them) and answers real
AdmissionReview requests sent as the API server sends them: over TLS to the Service's name, checked
against the CA in the ValidatingWebhookConfiguration.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from olmo_operator import api
from tests.deploy import chart
from tests.operator.kube import KubeServer, wait_for
from tests.operator.operator_env import apply, free_port, jobs_of, olmorun


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.read().decode() if answer.status == 200 else ""
    except OSError:
        return ""


def test_operator_started_from_the_chart_runs_an_olmorun(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    health, metrics, webhook = free_port(), free_port(), free_port()
    objects = chart.render(
        {
            "healthPort": health,
            "metrics": {"port": metrics},
            "webhook": {"port": webhook},
            "resyncSeconds": 0.5,
            "logLevel": "DEBUG",
        }
    )
    pod = chart.find(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}  # every entry is a plain value: no Secret is read
    certs = tmp_path / "webhook-tls"  # the Secret's files, where the pod mounts them
    certs.mkdir()
    secret = chart.find(objects, "Secret")
    for key, value in secret["data"].items():
        (certs / key).write_bytes(base64.b64decode(value))
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OLMORUN_KUBE_SERVER": kube.url,
        "OLMORUN_WEBHOOK_CERT_DIR": str(certs),
    }
    assert container["command"] == ["python", "-m", "olmo_operator"]
    process = subprocess.Popen(
        container["command"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        apply(kubectl, olmorun("charted", tmp_path / "storage"))
        job = wait_for(
            lambda: jobs_of(kube, "charted").get("charted-pretrain-a1"),
            timeout=60,
            what="the Volcano Job submitted by the chart's operator",
        )
        assert job["spec"]["queue"] == "research"

        # The probes and the metrics Service point at what the process serves.
        probe = container["livenessProbe"]["httpGet"]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["port"]]
        assert port == health and wait_for(lambda: _get(port, probe["path"]), what="the liveness endpoint")
        service = chart.find(objects, "Service", "olmorun-operator-metrics")["spec"]["ports"][0]
        scraped = {p["name"]: p["containerPort"] for p in container["ports"]}[service["targetPort"]]
        exposition = wait_for(lambda: _get(scraped, "/metrics"), what="/metrics")
        assert "olmorun_job_submissions_total 1.0" in exposition

        # The admission webhook: what `olmorun validate` refuses is refused, with the same problems.
        hook = chart.find(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["webhook"] == webhook
        good = olmorun("good", tmp_path / "storage")
        bad = copy.deepcopy(good)
        bad["metadata"]["name"] = "bad"
        bad["spec"]["phases"][0]["maxTokens"] = "10Q"
        bad["spec"]["phases"][0]["batch"]["globalBatchSize"] = 3
        wait_for(lambda: _serving(webhook), what="the webhook's port", timeout=30)
        answer = _review(hook, webhook, "CREATE", bad)
        assert answer["allowed"] is False and answer["status"]["code"] == 422
        with_problems = _problems(bad)
        assert with_problems and all(problem in answer["status"]["message"] for problem in with_problems)
        assert _review(hook, webhook, "CREATE", good)["allowed"] is True
        # A write that keeps the spec (the finalizer's removal) is admitted even for a spec refused now.
        assert _review(hook, webhook, "UPDATE", bad, old=bad)["allowed"] is True
        assert _review(hook, webhook, "UPDATE", bad, old=good)["allowed"] is False
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "DEBUG" in output  # the chart's logLevel reached the process


def _serving(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _problems(document: dict[str, Any]) -> list[str]:
    """What `olmorun validate` prints for the document (api.parse_olmorun's problems)."""
    try:
        api.parse_olmorun(document)
    except api.SpecError as error:
        return [str(p) for p in error.problems]
    return []


class _ServiceConnection(http.client.HTTPSConnection):
    """TLS to the Service's DNS name (as the API server connects), the socket to 127.0.0.1."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        # http.client keeps its SSL context in the private `_context` (typeshed does not declare it).
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _review(
    hook: dict[str, Any], port: int, operation: str, obj: dict[str, Any], old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionReview for `obj`, sent to the webhook as the API server sends it;
    the response part of the answer."""
    client = hook["clientConfig"]
    service = client["service"]
    context = ssl.create_default_context(cadata=base64.b64decode(client["caBundle"]).decode())
    host = f"{service['name']}.{service['namespace']}.svc"
    gvk = {"group": api.GROUP, "version": api.VERSION, "kind": api.KIND}
    gvr = {"group": api.GROUP, "version": api.VERSION, "resource": api.PLURAL}
    uid = str(uuid.uuid4())
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"].get("namespace", "default"),
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
        },
    }
    connection = _ServiceConnection(host, port, context=context, timeout=10)
    try:
        connection.request("POST", service["path"], json.dumps(review), {"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert answer["response"]["uid"] == uid
    response: dict[str, Any] = answer["response"]
    return response
