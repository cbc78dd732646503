"""The operator as the Helm chart deploys it, against the emulated Kubernetes API.

The Deployment's container command and environment come from the chart rendered by the real Helm SDK
and start the operator process unchanged. Two things differ from a pod, by necessity: PATH puts this
virtualenv's `python` first (the image's is /opt/venv/bin/python), and OLMORUN_KUBE_SERVER points at the
emulator, standing in for the in-cluster ServiceAccount config a pod gets (no API server runs here).
The ports are chosen free on this machine through the chart's own values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

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
    health, metrics = free_port(), free_port()
    objects = chart.render(
        {"healthPort": health, "metrics": {"port": metrics}, "resyncSeconds": 0.5, "logLevel": "DEBUG"}
    )
    pod = chart.find(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}  # every entry is a plain value: no Secret is read
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OLMORUN_KUBE_SERVER": kube.url,
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
        service = chart.find(objects, "Service")["spec"]["ports"][0]
        scraped = {p["name"]: p["containerPort"] for p in container["ports"]}[service["targetPort"]]
        exposition = wait_for(lambda: _get(scraped, "/metrics"), what="/metrics")
        assert "olmorun_job_submissions_total 1.0" in exposition
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "DEBUG" in output  # the chart's logLevel reached the process
