"""The real operator (kopf + our handlers, in-process) against the emulated Kubernetes API.

The test plays the user (kubectl apply/delete), the Volcano controller (moving `status.state.phase`
of the Jobs) and the trainer (committing checkpoints with olmo_trainer.manifest in a file:// storage).
Every OlmoRun write is validated against the generated CRD schema by the emulator (tests/operator/kube.py).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import time
import typing
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pydantic
import pytest

from olmo_operator import api
from olmo_operator.__main__ import _Redacting
from olmo_operator.kube_status import merge_patch, redact, secret_values
from olmo_operator.plan import INVALID_REASON
from olmo_operator.request import LABEL_PHASE
from olmo_operator.settings import FINALIZER, Settings, SettingsError
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem
from tests.operator.kube import (
    EVENTS,
    OLMORUNS,
    VCJOBS,
    KubeServer,
    OperatorThread,
    validate_structural,
    wait_for,
)
from tests.operator.operator_env import (
    GROUP,
    NS,
    VERSION,
    apply,
    commit_checkpoint,
    condition,
    free_port,
    jobs_of,
    olmorun,
    phase_state,
    reasons,
    set_job_phase,
    status_of,
)

# --- scenarios ---------------------------------------------------------------------------------


def test_run_lifecycle_jobs_phases_events_and_delete(kube: KubeServer, kubectl: Any, tmp_path: Path) -> None:
    body = olmorun("life", tmp_path, seeds=(11, 22))
    health = free_port()
    with OperatorThread(kube, health_port=health) as operator:
        apply(kubectl, body)
        job = wait_for(lambda: jobs_of(kube, "life").get("life-pretrain-a1"), what="the pretrain job")

        # The Volcano Job has the shape the trainer needs.
        task = job["spec"]["tasks"][0]
        container = task["template"]["spec"]["containers"][0]
        run_uid = kube.get(OLMORUNS, NS, "life")["metadata"]["uid"]
        assert container["image"] == body["spec"]["image"]
        assert task["replicas"] == 1
        assert job["spec"]["queue"] == "research"
        assert job["metadata"]["labels"][LABEL_PHASE] == "pretrain"
        assert job["metadata"]["ownerReferences"] == [
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": "life",
                "uid": run_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert {"secretRef": {"name": "s3-credentials"}} in container["envFrom"]
        run = kube.get(OLMORUNS, NS, "life")
        assert FINALIZER in run["metadata"]["finalizers"]
        assert (tmp_path / NS / "life" / "run.json").exists()

        set_job_phase(kubectl, "life-pretrain-a1", "Running")
        wait_for(lambda: phase_state(kube, "life", "pretrain") == "Running", what="pretrain Running")
        assert (status_of(kube, "life")["stage"], status_of(kube, "life")["activePhases"]) == (
            "Running",
            ["pretrain"],
        )
        assert condition(kube, "life", "Progressing")["status"] == "True"

        commit_checkpoint(body, "pretrain", 6198, 4)
        set_job_phase(kubectl, "life-pretrain-a1", "Completed")
        wait_for(lambda: phase_state(kube, "life", "pretrain") == "Succeeded", what="pretrain Succeeded")
        archived = status_of(kube, "life")["phases"]["pretrain"]["archive"]
        assert archived.endswith("/archive/pretrain/step4")
        assert manifest.verify(*filesystem(archived)).ok

        # The anneal fans out into one job per seed; the run succeeds when both are archived.
        wait_for(
            lambda: {"life-anneal-s11-a1", "life-anneal-s22-a1"} <= set(jobs_of(kube, "life")),
            what="anneal jobs",
        )
        for seed in (11, 22):
            commit_checkpoint(body, "anneal", seed, 2)
            set_job_phase(kubectl, f"life-anneal-s{seed}-a1", "Completed")
        wait_for(lambda: condition(kube, "life", "Succeeded").get("status") == "True", what="run Succeeded")
        status = status_of(kube, "life")
        assert status["stage"] == "Succeeded"
        assert status["observedGeneration"] == 1
        assert condition(kube, "life", "Progressing")["status"] == "False"
        wait_for(
            lambda: (
                {"PhaseStarted", "PhaseSucceeded", "JobSucceeded", "Archived"} <= set(reasons(kube, "life"))
            ),
            what="events",
        )
        assert {e["type"] for e in kube.objects(EVENTS, NS).values()} == {"Normal"}
        assert {e["involvedObject"]["uid"] for e in kube.objects(EVENTS, NS).values()} == {run_uid}

        # Metrics and liveness of the live operator.
        assert operator.metrics.value("olmorun_job_submissions_total") == 3
        assert operator.metrics.value("olmorun_job_retries_total") == 0
        assert operator.metrics.value("olmorun_runs", state="Succeeded") == 1
        assert operator.metrics.value("olmorun_reconcile_duration_seconds_count", trigger="create") >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as answer:
            assert answer.status == 200

        # A finished run is not polled: no job is described any more.
        calls = len([c for c in kube.calls if c.resource == "jobs" and c.action == "FETCH"])
        time.sleep(1.0)  # three resync intervals
        assert len([c for c in kube.calls if c.resource == "jobs" and c.action == "FETCH"]) == calls

        # Delete: every job is cancelled, then the finalizer goes and the run with it.
        kubectl.delete_namespaced_custom_object(GROUP, VERSION, NS, api.PLURAL, "life")
        wait_for(lambda: kube.get(OLMORUNS, NS, "life") is None, what="the run to be gone")
        assert jobs_of(kube, "life") == {}
        assert sorted(kube.ever_created(VCJOBS)) == [
            "life-anneal-s11-a1",
            "life-anneal-s22-a1",
            "life-pretrain-a1",
        ]


def test_restart_mid_run_creates_no_duplicate_and_delete_cancels(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    body = olmorun("restart", tmp_path)
    with OperatorThread(kube):
        apply(kubectl, body)
        wait_for(lambda: "restart-pretrain-a1" in jobs_of(kube, "restart"), what="the job")
        set_job_phase(kubectl, "restart-pretrain-a1", "Running")
        wait_for(lambda: phase_state(kube, "restart", "pretrain") == "Running", what="Running")
    before = copy.deepcopy(status_of(kube, "restart"))

    with OperatorThread(kube) as again:
        # resume + several timer ticks of a fresh operator that remembers nothing
        wait_for(
            lambda: again.metrics.value("olmorun_reconcile_duration_seconds_count", trigger="timer") >= 3,
            what="the new operator's timer",
        )
        assert kube.ever_created(VCJOBS) == ["restart-pretrain-a1"]
        assert again.metrics.value("olmorun_job_submissions_total") == 0
        after = status_of(kube, "restart")
        assert after["phases"]["pretrain"]["jobs"] == before["phases"]["pretrain"]["jobs"]

        kubectl.delete_namespaced_custom_object(GROUP, VERSION, NS, api.PLURAL, "restart")
        wait_for(lambda: kube.get(OLMORUNS, NS, "restart") is None, what="the run to be gone")
        assert jobs_of(kube, "restart") == {}, "the running job was not cancelled"


def test_invalid_spec_gets_invalid_condition_and_no_job(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    body = olmorun("bad", tmp_path)
    body["spec"]["phases"][0]["batch"]["globalBatchSize"] = (
        3  # passes the CRD schema, not divisible by 2 procs
    )
    with OperatorThread(kube):
        apply(kubectl, body)
        invalid = wait_for(lambda: condition(kube, "bad", "Invalid"), what="the Invalid condition")
        assert invalid["status"] == "True"
        assert invalid["reason"] == INVALID_REASON
        assert "spec.phases[0].batch.globalBatchSize" in invalid["message"]
        assert status_of(kube, "bad")["stage"] == "Invalid"
        wait_for(lambda: INVALID_REASON in reasons(kube, "bad"), what="a Warning event")
        assert kube.ever_created(VCJOBS) == []

        # Fixing the spec is an update: the run proceeds.
        kubectl.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            api.PLURAL,
            "bad",
            {
                "spec": {
                    "phases": [
                        {**body["spec"]["phases"][0], "batch": {"globalBatchSize": 4, "microBatchSize": 1}}
                    ]
                }
            },
        )
        wait_for(lambda: "bad-pretrain-a1" in jobs_of(kube, "bad"), what="the job after the fix")
        wait_for(lambda: condition(kube, "bad", "Invalid").get("status") != "True", what="Invalid cleared")
        assert status_of(kube, "bad")["observedGeneration"] == 2
        assert reasons(kube, "bad").count(INVALID_REASON) == 1


def test_a_malformed_quantity_is_refused_by_the_api_server_and_creates_nothing(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    """`memory: 16GB` (Kubernetes writes 16G or 16Gi): the CRD schema's quantity pattern refuses it."""
    body = olmorun("quantity", tmp_path)
    body["spec"]["cluster"]["memory"] = "16GB"
    with OperatorThread(kube):
        with pytest.raises(kubernetes.client.ApiException) as refused:
            apply(kubectl, body)
        assert refused.value.status == 422 and "cluster.memory" in str(refused.value.body)
        kube.emulator.rejections.clear()
        body["spec"]["cluster"].update(memory="16Gi", cpu=4)  # what Kubernetes accepts, an unquoted cpu too
        apply(kubectl, body)
        job = wait_for(lambda: jobs_of(kube, "quantity").get("quantity-pretrain-a1"), what="the job")
        resources = job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}


def test_a_job_refused_by_admission_makes_the_run_invalid_and_is_not_retried(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    """A spec both doors accept, whose job the API server refuses (422: Volcano's queue admission, played
    by a schema on Volcano Jobs): the user's fault, so Invalid=True with the server's message, no
    TemporaryError loop; fixing the spec proceeds."""
    kube.emulator.schemas[VCJOBS] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"queue": {"type": "string", "enum": ["default"]}},
            }
        },
    }
    body = olmorun("refused", tmp_path)  # queue: research
    with OperatorThread(kube) as operator:
        apply(kubectl, body)
        invalid = wait_for(
            lambda: (
                condition(kube, "refused", "Invalid").get("status") == "True"
                and condition(kube, "refused", "Invalid")
            ),
            what="Invalid=True",
        )
        assert invalid["reason"] == INVALID_REASON
        assert "refused a job of this run (422)" in invalid["message"] and "research" in invalid["message"]
        assert status_of(kube, "refused")["stage"] == "Invalid"
        time.sleep(2.0)  # 4 resync periods and error delays: a transient error would have been retried
        creates = [
            c
            for c in kube.calls
            if c.action == "CREATE" and c.resource == "jobs" and c.name == "refused-pretrain-a1"
        ]
        assert len(creates) == 1, "the refused job was submitted again"
        assert operator.metrics.value("olmorun_reconcile_errors_total", error="temporary") == 0
        assert reasons(kube, "refused").count(INVALID_REASON) == 1
        kube.emulator.rejections.clear()

        kubectl.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            api.PLURAL,
            "refused",
            {"spec": {"cluster": {**body["spec"]["cluster"], "queue": "default"}}},
        )
        wait_for(lambda: "refused-pretrain-a1" in jobs_of(kube, "refused"), what="the job after the fix")
        wait_for(
            lambda: condition(kube, "refused", "Invalid").get("status") == "False", what="Invalid cleared"
        )


def test_failed_job_is_retried_after_backoff(kube: KubeServer, kubectl: Any, tmp_path: Path) -> None:
    body = olmorun("flaky", tmp_path, backoff=2)
    with OperatorThread(kube) as operator:
        apply(kubectl, body)
        wait_for(lambda: "flaky-pretrain-a1" in jobs_of(kube, "flaky"), what="the first attempt")
        set_job_phase(kubectl, "flaky-pretrain-a1", "Failed")
        job = wait_for(
            lambda: (
                (status_of(kube, "flaky").get("phases", {}).get("pretrain", {}).get("jobs") or [{}])[0]
                if phase_state(kube, "flaky", "pretrain") == "Retrying"
                else None
            ),
            what="Retrying",
        )
        assert job["retryAt"]
        wait_for(lambda: "flaky-pretrain-a2" in jobs_of(kube, "flaky"), timeout=10, what="the second attempt")
        # Server-side timestamps: the retry came no sooner than the backoff after the failure, less the 1 s
        # resolution of status.retryAt (RFC 3339 in whole seconds, so a retry may come up to 1 s early).
        failed_at = max(
            c.at for c in kube.calls if c.name == "flaky-pretrain-a1" and c.subresource == "status"
        )
        retried_at = min(c.at for c in kube.calls if c.name == "flaky-pretrain-a2" and c.action == "CREATE")
        assert retried_at - failed_at >= 2.0 - 1.0, "retried before the backoff"
        wait_for(lambda: {"JobFailed", "Retrying"} <= set(reasons(kube, "flaky")), what="events")
        failed = [e for e in kube.objects(EVENTS, NS).values() if e["reason"] == "JobFailed"]
        assert [e["type"] for e in failed] == ["Warning"]
        assert operator.metrics.value("olmorun_job_retries_total") == 1
        # The second attempt runs the same config, resuming from the same save_dir.
        first, second = (
            jobs_of(kube, "flaky")["flaky-pretrain-a1"],
            jobs_of(kube, "flaky")["flaky-pretrain-a2"],
        )
        assert (
            first["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["image"]
            == second["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["image"]
        )


def test_storage_error_is_retried_by_kopf_then_the_run_proceeds(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "storage"
    blocker.write_text("a file where the storage directory should be")  # every write under it fails
    with OperatorThread(kube) as operator:
        apply(kubectl, olmorun("blocked", blocker))
        wait_for(
            lambda: operator.metrics.value("olmorun_reconcile_errors_total", error="temporary") >= 2,
            what="temporary errors, retried",
        )
        assert kube.ever_created(VCJOBS) == []
        blocker.unlink()
        wait_for(lambda: "blocked-pretrain-a1" in jobs_of(kube, "blocked"), what="the job once storage works")
        assert operator.metrics.value("olmorun_reconcile_errors_total", error="permanent") == 0


def test_namespaced_operator_ignores_other_namespaces(tmp_path: Path) -> None:
    from olmo_operator.crd import build_crd

    with KubeServer([build_crd()], namespaces=("default", "other")) as server:
        client = server.api_client()
        kubectl = kubernetes.client.CustomObjectsApi(client)
        with OperatorThread(server, namespaces=("default",)) as operator:
            outside = olmorun("outside", tmp_path)
            outside["metadata"]["namespace"] = "other"
            kubectl.create_namespaced_custom_object(GROUP, VERSION, "other", api.PLURAL, outside)
            apply(kubectl, olmorun("inside", tmp_path))
            wait_for(lambda: "inside-pretrain-a1" in jobs_of(server, "inside"), what="the served run's job")
            wait_for(
                lambda: (
                    operator.metrics.value("olmorun_reconcile_duration_seconds_count", trigger="timer") >= 3
                ),
                what="a few timer ticks",
            )
        assert server.ever_created(VCJOBS) == ["inside-pretrain-a1"]
        assert "status" not in server.get(OLMORUNS, "other", "outside")
        assert server.emulator.rejections == []


# --- the emulator itself: what makes the scenarios above trustworthy -------------------------


def test_emulator_refuses_fields_the_crd_schema_lacks(kube: KubeServer, kubectl: Any, tmp_path: Path) -> None:
    apply(kubectl, olmorun("schema", tmp_path))
    obj = kube.get(OLMORUNS, NS, "schema")
    assert obj["metadata"]["uid"] and obj["metadata"]["generation"] == 1
    version = obj["metadata"]["resourceVersion"]

    with pytest.raises(kubernetes.client.ApiException) as refused:
        kubectl.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, api.PLURAL, "schema", {"status": {"notInTheSchema": 1}}
        )
    assert refused.value.status == 422
    assert kube.emulator.rejections[-1].reasons == (
        "status.notInTheSchema: field not declared in the schema (the API server would prune it)",
    )
    kube.emulator.rejections.clear()

    # A status write bumps resourceVersion, not generation; a no-op write changes nothing.
    kubectl.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, api.PLURAL, "schema", {"status": {"stage": "x"}}
    )
    obj = kube.get(OLMORUNS, NS, "schema")
    assert obj["metadata"]["resourceVersion"] != version and obj["metadata"]["generation"] == 1
    version = obj["metadata"]["resourceVersion"]
    kubectl.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, api.PLURAL, "schema", {"status": {"stage": "x"}}
    )
    assert kube.get(OLMORUNS, NS, "schema")["metadata"]["resourceVersion"] == version
    # Status through the main resource is ignored (status subresource), spec bumps generation.
    kubectl.patch_namespaced_custom_object(
        GROUP, VERSION, NS, api.PLURAL, "schema", {"spec": {"seed": 7}, "status": {"stage": "y"}}
    )
    obj = kube.get(OLMORUNS, NS, "schema")
    assert obj["metadata"]["generation"] == 2 and obj["status"]["stage"] == "x"

    # PUT replaces, with optimistic concurrency on resourceVersion.
    stale = copy.deepcopy(obj)
    stale["metadata"]["resourceVersion"] = version
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        kubectl.replace_namespaced_custom_object(GROUP, VERSION, NS, api.PLURAL, "schema", stale)
    assert conflict.value.status == 409
    obj["spec"]["seed"] = 8
    replaced = kubectl.replace_namespaced_custom_object(GROUP, VERSION, NS, api.PLURAL, "schema", obj)
    assert replaced["spec"]["seed"] == 8 and replaced["metadata"]["generation"] == 3
    # The kubernetes client's watch=True is a watch (it streams the object as ADDED first).
    stream = kubernetes.watch.Watch().stream(
        kubectl.list_namespaced_custom_object, GROUP, VERSION, NS, api.PLURAL, timeout_seconds=1
    )
    first = next(iter(stream))
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "schema"


def _filled(annotation: Any) -> Any:
    """A sample value of a type, with every field of a model set (optional ones included)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation(**{name: _filled(f.annotation) for name, f in annotation.model_fields.items()})
    if origin is typing.Literal:
        return args[0]
    if origin is list:
        return [_filled(args[0])]
    if origin is dict:
        return {"k": _filled(args[1])}
    if args:  # X | None
        return _filled(args[0])
    return {str: "x", int: 1, float: 0.5, bool: True}[annotation]


def test_every_status_field_fits_the_crd_schema() -> None:
    """A status with EVERY field set (a field added to api.py later included) passes the schema."""
    from olmo_operator.crd import build_crd

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    full = _filled(api.OlmoRunStatus)
    dumped = full.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["phases"]["k"]["jobs"][0]["retryAt"] == "x"  # nested optional fields are present
    assert validate_structural(dumped, schema) == []
    dumped["phases"]["k"]["jobs"][0]["notInApi"] = 1
    assert validate_structural(dumped, schema) == [
        "phases.k.jobs[0].notInApi: field not declared in the schema (the API server would prune it)"
    ]


# --- small pure helpers of the handlers and settings -------------------------------------------


def test_merge_patch_writes_only_changes_and_deletes_removed_keys() -> None:
    old = {"stage": "a", "phases": {"p": {"state": "Running", "step": 3}}, "step": 1}
    new = {"stage": "a", "phases": {"p": {"state": "Succeeded"}}, "tokens": 5}
    assert merge_patch(old, new) == {
        "phases": {"p": {"state": "Succeeded", "step": None}},
        "step": None,
        "tokens": 5,
    }
    assert merge_patch(new, new) == {}


def test_secrets_are_redacted_everywhere() -> None:
    secrets = secret_values(
        {"AWS_SECRET_ACCESS_KEY": "hunter2hunter2", "HOME": "/root", "WANDB_API_KEY": "short"}
    )
    assert secrets == {"hunter2hunter2"}
    assert redact({"m": ["key hunter2hunter2 leaked"]}, secrets) == {"m": ["key *** leaked"]}


def test_log_records_are_redacted() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "key=%s", ("hunter2hunter2",), None)
    assert _Redacting(frozenset({"hunter2hunter2"})).filter(record)
    assert record.getMessage() == "key=***"


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            "OLMORUN_NAMESPACES": "a, b",
            "OLMORUN_RESYNC_SECONDS": "2.5",
            "OLMORUN_METRICS_PORT": "0",
            "OLMORUN_KUBE_SERVER": "http://x:8001/",
        }
    )
    assert settings.namespaces == ("a", "b") and not settings.clusterwide
    assert (
        settings.resync_seconds == 2.5
        and settings.metrics_port == 0
        and settings.kube_server == "http://x:8001"
    )
    assert (
        Settings.from_env({}).clusterwide
        and Settings.from_env({}).liveness_endpoint == "http://0.0.0.0:8080/healthz"
    )
    for env, fault in [
        ({"OLMORUN_RESYNC_SECONDS": "soon"}, "OLMORUN_RESYNC_SECONDS"),
        ({"OLMORUN_METRICS_PORT": "70000"}, "OLMORUN_METRICS_PORT"),
        ({"OLMORUN_LOG_LEVEL": "loud"}, "OLMORUN_LOG_LEVEL"),
    ]:
        with pytest.raises(SettingsError, match=fault):
            Settings.from_env(env)


def test_python_m_olmo_operator_serves_runs_health_and_metrics(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    """The entry point of the operator image, as a process of its own."""
    health, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "OLMORUN_KUBE_SERVER": kube.url,
        "OLMORUN_RESYNC_SECONDS": "0.3",
        "OLMORUN_HEALTH_PORT": str(health),
        "OLMORUN_METRICS_PORT": str(metrics),
    }
    bad = subprocess.run(
        [sys.executable, "-m", "olmo_operator"],
        env={**env, "OLMORUN_RESYNC_SECONDS": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "OLMORUN_RESYNC_SECONDS" in bad.stderr and "Traceback" not in bad.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "olmo_operator"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        apply(kubectl, olmorun("proc", tmp_path))
        wait_for(lambda: "proc-pretrain-a1" in jobs_of(kube, "proc"), timeout=60, what="the job")

        def get(port: int, path: str) -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                    return answer.read().decode() if answer.status == 200 else ""
            except OSError:
                return ""

        assert wait_for(lambda: get(health, "/healthz"), what="/healthz")
        exposition = wait_for(lambda: get(metrics, "/metrics"), what="/metrics")
        assert "olmorun_job_submissions_total 1.0" in exposition
        assert 'olmorun_runs{state="Running"} 1.0' in exposition
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
