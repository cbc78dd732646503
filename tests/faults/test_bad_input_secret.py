"""A Secret the run references but that does not exist: the job's status and a Warning event say so.

The operator never reads Secrets (its RBAC has no access to them): the kubelet finds the missing one
when it starts the pod and leaves the container waiting with CreateContainerConfigError, `secret "x"
not found`, while the Volcano Job stays Pending forever. The operator's step (reconcile with the real
VolcanoLauncher, on the kmock emulator of tests/operator/kube.py) reads that from the Job's pods. The
pod status is written by the test, as the kubelet would (no kubelet runs here).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import kubernetes
import yaml

from olmo_operator import layout
from olmo_operator.api import parse_olmorun
from olmo_operator.launcher_volcano import VolcanoLauncher
from olmo_operator.reconcile import reconcile_plan
from olmo_operator.request import job_request
from tests.operator.kube import KubeServer
from tests.operator.test_reconcile import EXAMPLE, T0

NAMESPACE = "research"


def _waiting_pod(kube: KubeServer, job: str, reason: str, message: str) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    pod = f"{job}-trainer-0-0"
    body = {
        "metadata": {"name": pod, "labels": {"volcano.sh/job-name": job}},
        "spec": {"containers": [{"name": "trainer-0", "image": "x"}]},
    }
    core.create_namespaced_pod(NAMESPACE, body)
    waiting = {
        "name": "trainer-0",
        "image": "x",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}},
    }
    core.patch_namespaced_pod_status(
        pod, NAMESPACE, {"status": {"phase": "Pending", "containerStatuses": [waiting]}}
    )


def test_a_missing_secret_is_said_in_the_jobs_status_and_an_event(tmp_path: Path) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace=NAMESPACE, uid="uid-secret", generation=1)
    document["spec"]["storage"] = {
        "uri": (tmp_path / "storage").as_uri(),
        "secretRef": {"name": "s3-credentials"},
    }
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    run = parse_olmorun(document)
    with KubeServer() as kube:
        launcher = VolcanoLauncher(NAMESPACE, api_client=kube.api_client())
        run = run.model_copy(update={"status": reconcile_plan(run, launcher=launcher, now=T0).status})
        job = run.status.phases["pretrain"].jobs[0]
        assert (
            job.state == "Pending" and launcher.describe(job.name).notice is None
        )  # no pod yet: just waiting

        _waiting_pod(kube, job.name, "CreateContainerConfigError", 'secret "s3-credentials" not found')
        result = reconcile_plan(run, launcher=launcher, now=T0 + dt.timedelta(minutes=1))
        seen = result.status.phases["pretrain"].jobs[0]
        assert seen.state == "Pending"
        assert 'secret "s3-credentials" not found' in seen.message
        assert f"create the Secret in namespace {NAMESPACE}" in seen.message
        assert [(e.type, e.reason) for e in result.events] == [("Warning", "SecretNotFound")]
        run = run.model_copy(update={"status": result.status})
        again = reconcile_plan(run, launcher=launcher, now=T0 + dt.timedelta(minutes=2))
        assert again.events == []  # said once, not at every resync
        assert again.status.phases["pretrain"].jobs[0].message == seen.message


def test_an_image_that_cannot_be_pulled_is_said_too() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace=NAMESPACE, uid="uid-image", generation=1)
    run = parse_olmorun(document)
    with KubeServer() as kube:
        launcher = VolcanoLauncher(NAMESPACE, api_client=kube.api_client())
        phase = run.phase("pretrain")
        request = job_request(run, phase, 6198, 1, layout.config_uri(run, phase, 6198))
        launcher.submit(request)
        _waiting_pod(
            kube, request.name, "ImagePullBackOff", 'Back-off pulling image "ghcr.io/olmorun/trainer:0.1.0"'
        )
        observed = launcher.describe(request.name)
        assert observed.state == "Pending" and observed.notice is not None
        assert observed.notice[0] == "ImagePullBackOff" and "Back-off pulling image" in observed.notice[1]
