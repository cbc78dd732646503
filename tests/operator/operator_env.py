"""The roles a test plays around the real operator on the emulated cluster, and what it observes.

The test plays the user (kubectl apply), the Volcano controller (moving `status.state.phase` of the
Jobs) and the trainer (committing checkpoints with olmo_trainer.manifest), and reads the OlmoRun's
status, its Jobs and its Events from the emulator (tests/operator/kube.py). Shared by the operator's
end-to-end tests (tests/e2e/test_operator_kmock.py, test_chart_operator.py) and its fault tests
(tests/faults/test_operator_faults.py, test_security_secrets.py, test_volcano_eviction.py); the
`kube` and `kubectl` fixtures themselves are in tests/operator/kube.py (tests/conftest.py exposes them).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import kubernetes

from olmo_operator import api, layout
from olmo_operator.request import LABEL_RUN
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem
from tests.dcp_files import dcp_metadata
from tests.operator.kube import EVENTS, OLMORUNS, VCJOBS, KubeServer

NS = "default"
GROUP, VERSION = api.GROUP, api.VERSION


def olmorun(name: str, storage: Path, *, seeds: tuple[int, ...] = (), backoff: int = 1) -> dict[str, Any]:
    """A small valid run: pretrain, then (with seeds) an anneal fanned out over them."""
    data = {
        "sequenceLength": 32,
        "sources": [{"name": "g", "synthetic": {"kind": "general", "numTokens": "10K"}}],
    }
    phases: list[dict[str, Any]] = [
        {
            "name": "pretrain",
            "kind": "pretrain",
            "maxSteps": 4,
            "data": data,
            "batch": {"globalBatchSize": 2, "microBatchSize": 1},
        },
    ]
    if seeds:
        phases.append(
            {
                "name": "anneal",
                "kind": "anneal",
                "from": "pretrain",
                "seeds": list(seeds),
                "maxSteps": 2,
                "data": data,
                "batch": {"globalBatchSize": 2, "microBatchSize": 1},
            }
        )
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": "registry.example/olmorun-trainer@sha256:" + "0" * 64,
            "model": {"preset": "tiny"},
            "storage": {"uri": storage.as_uri(), "secretRef": {"name": "s3-credentials"}},
            "cluster": {"gpusPerNode": 0, "procsPerNode": 2, "queue": "research"},
            "retry": {"backoffLimit": 2, "backoffSeconds": backoff, "maxBackoffSeconds": backoff},
            "phases": phases,
        },
    }


# --- the three roles the test plays ----------------------------------------------------------


def apply(kubectl: kubernetes.client.CustomObjectsApi, body: dict[str, Any]) -> None:
    kubectl.create_namespaced_custom_object(GROUP, VERSION, NS, api.PLURAL, body)


def set_job_phase(kubectl: kubernetes.client.CustomObjectsApi, job: str, phase: str) -> None:
    """What Volcano's controller does: the Job's `status.state.phase`."""
    kubectl.patch_namespaced_custom_object_status(
        "batch.volcano.sh", "v1alpha1", NS, "jobs", job, {"status": {"state": {"phase": phase}}}
    )


def commit_checkpoint(body: dict[str, Any], phase: str, seed: int, step: int) -> str:
    """What the trainer does: a step directory with a shard and its DCP index, committed by its MANIFEST."""
    run = api.parse_olmorun(body)
    save = layout.save_dir(run, run.phase(phase), seed)
    fs, root = filesystem(layout.checkpoints_dir(save))
    directory = layout.step_uri(root, step)
    fs.makedirs(directory, exist_ok=True)
    fs.pipe_file(f"{directory}/__0_0.distcp", f"weights of {phase}/{seed} at {step}".encode())
    fs.pipe_file(f"{directory}/.metadata", dcp_metadata(["__0_0.distcp"]))
    manifest.commit(fs, directory, manifest.build_manifest(fs, directory, step=step))
    return directory


# --- observations ------------------------------------------------------------------------------


def status_of(kube: KubeServer, name: str) -> dict[str, Any]:
    return (kube.get(OLMORUNS, NS, name) or {}).get("status", {})


def condition(kube: KubeServer, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status_of(kube, name).get("conditions", []) if c["type"] == type_), {})


def phase_state(kube: KubeServer, name: str, phase: str) -> str | None:
    return status_of(kube, name).get("phases", {}).get(phase, {}).get("state")


def jobs_of(kube: KubeServer, run: str) -> dict[str, dict[str, Any]]:
    return {
        n: j
        for n, j in kube.objects(VCJOBS, NS).items()
        if j["metadata"].get("labels", {}).get(LABEL_RUN) == run
    }


def events_of(kube: KubeServer, run: str) -> list[dict[str, Any]]:
    """The Events about the OlmoRun `run` (its involvedObject), in the emulator's order."""
    return [e for e in kube.objects(EVENTS, NS).values() if e.get("involvedObject", {}).get("name") == run]


def reasons(kube: KubeServer, run: str) -> list[str]:
    return [e.get("reason", "") for e in events_of(kube, run)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
