"""Volcano ends a Job because a pod was taken away (node drain, spot reclaim, preemption, node pressure):
that is preemption, resubmitted at once without using the retry budget. A crash is a failure.

The edge: the Volcano controller cannot run here. What it does with a pod event is played by
`volcano_reacts`, a transcription of its decision (volcano-sh/volcano, paths in each docstring) that
reads the Job exactly as our launcher created it in the emulated API server (its `maxRetry` and
`policies`). The Job status and the pods are then written as Volcano and the kubelet write them
(`volcano_status`, `evicted_pod`), and the real VolcanoLauncher.describe and the real planner
(Reconciler.step, on file:// storage) decide.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from olmo_operator.launcher_volcano import VolcanoLauncher
from olmo_operator.reconcile import Outcome, Reconciler
from tests.operator.kube import VCJOBS, KubeServer
from tests.operator.operator_env import NS, olmorun

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
VOLCANO_DEFAULT_MAX_RETRY = 3
"""pkg/webhooks/admission/jobs/mutate/mutate_job.go: DefaultMaxRetry, patched in when spec.maxRetry is 0."""


# --- what Volcano does (the edge that cannot run here) -------------------------------------------


def volcano_reacts(spec: dict[str, Any], event: str, exit_code: int = 0) -> list[str]:
    """The Job phases Volcano's controller goes through after one pod event of a one-pod Job.

    - the action: pkg/controllers/job/job_controller_util.go, applyPolicies: the job-level policies in
      order; a policy matches when its events hold the event (or "*"), or its exitCode equals the pod's
      (a deleted pod, event PodEvicted, has exit code 0: job_controller_handler.go, deletePod); none
      matches: SyncJob.
    - RestartJob: state/running.go increments retryCount (Restarting); state/restarting.go marks the Job
      Failed once retryCount >= maxRetry, else Pending again: Volcano's own retry. maxRetry 0 is read
      as 3 (the mutating webhook).
    - TerminateJob / AbortJob: Terminating -> Terminated, Aborting -> Aborted (state/terminating.go).
    - SyncJob (no policy): a deleted pod is created again (syncJob: a retry nobody counts); a failed
      pod of a one-pod Job makes it Failed (state/running.go: succeeded+failed == replicas).
    """
    action = "SyncJob"
    for policy in spec.get("policies") or []:
        events = ([policy["event"]] if policy.get("event") else []) + list(policy.get("events") or [])
        if events and (event in events or "*" in events):
            action = policy["action"]
            break
        if policy.get("exitCode") is not None and policy["exitCode"] == exit_code:
            action = policy["action"]
            break
    max_retry = spec.get("maxRetry") or VOLCANO_DEFAULT_MAX_RETRY
    if action == "RestartJob":
        return ["Restarting", "Failed"] if max_retry <= 1 else ["Restarting", "Pending"]
    if action == "TerminateJob":
        return ["Terminating", "Terminated"]
    if action == "AbortJob":
        return ["Aborting", "Aborted"]
    return ["Running"] if event == "PodEvicted" else ["Failed"]


def volcano_status(phases: list[str], *, task: str, pods: dict[str, int], retry_count: int) -> dict[str, Any]:
    """`status` of a vcjob as Volcano's controller writes it (UpdateStatus in killJob/syncJob, fields of
    staging/src/volcano.sh/apis/pkg/apis/batch/v1alpha1/job.go JobStatus): the state and its transition
    time, one condition per phase it went through, pod counts by phase, the version killJob bumps."""
    times = [T0 + dt.timedelta(seconds=i) for i in range(2 + len(phases))]
    stamp = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in times]
    history = ["Pending", "Running", *phases]
    status: dict[str, Any] = {
        "state": {"phase": history[-1], "lastTransitionTime": stamp[-1]},
        "minAvailable": 1,
        "version": 1,
        "runningDuration": f"{len(history) - 1}s",
        "controlledResources": {"plugin-env": "env", "plugin-svc": "svc"},
        "conditions": [{"status": p, "lastTransitionTime": s} for p, s in zip(history, stamp, strict=True)],
        "taskStatusCount": {task: {"phase": dict(pods)}} if pods else {},
    }
    if retry_count:
        status["retryCount"] = retry_count
    for phase, count in pods.items():
        status[phase.lower()] = count
    return status


def evicted_pod(
    job: str, task: str, *, exit_code: int, reason: str | None = None, disruption: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pod of the Job (as Volcano names and labels it) and its final status as the kubelet writes it:
    phase Failed, the container's exit code, `reason: Evicted` after node-pressure eviction, and the
    DisruptionTarget condition Kubernetes (>= 1.26) or Volcano's scheduler set before taking a pod."""
    meta = {
        "name": f"{job}-{task}-0",
        "labels": {"volcano.sh/job-name": job, "volcano.sh/task-spec": task},
        "annotations": {
            "volcano.sh/job-name": job,
            "volcano.sh/task-spec": task,
            "volcano.sh/job-version": "0",
        },
    }
    body = {
        "metadata": meta,
        "spec": {"restartPolicy": "Never", "containers": [{"name": task, "image": "x"}]},
    }
    status: dict[str, Any] = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": task,
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
            }
        ],
    }
    if reason:
        status.update(reason=reason, message="The node was low on resource: memory.")
    if disruption:
        status["conditions"] = [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption,
                "lastTransitionTime": "2026-11-01T12:00:01Z",
            }
        ]
    return body, status


# --- the scenarios -------------------------------------------------------------------------------

# (event Volcano receives, the pod's exit code, pod reason, DisruptionTarget reason, pod deleted)
SCENARIOS = {
    # kubectl drain: the Eviction API sets DisruptionTarget and deletes the pod gracefully; SIGTERM makes
    # the trainer save and exit 143; the pod's Failed phase reaches Volcano before its deletion.
    "node-drain": ("PodFailed", 143, None, "EvictionByEvictionAPI", True),
    # Spot reclaim: the node is gone and the pod garbage collector deletes its pods (no exit code seen).
    "spot-reclaim": ("PodEvicted", 0, None, "DeletionByPodGC", True),
    # Volcano's scheduler preempts for a higher-priority job (pkg/scheduler/cache/cache.go, Evict).
    "volcano-preemption": ("PodEvicted", 0, None, "PreemptionByScheduler", True),
    # The kubelet evicts under memory pressure: the pod stays, Failed with reason Evicted, killed (137).
    "node-pressure": ("PodFailed", 137, "Evicted", "TerminationByKubelet", False),
}


def _step(reconciler: Reconciler, body: dict[str, Any], status: dict[str, Any] | None) -> Outcome:
    return reconciler.step(
        {**body, "metadata": {**body["metadata"], "uid": "uid-1", "generation": 1}, "status": status or {}}
    )


def _dump(outcome: Outcome) -> dict[str, Any]:
    return outcome.status.model_dump(mode="json", by_alias=True, exclude_none=True)


def _take_pod(kube: KubeServer, job: str, scenario: str) -> tuple[list[str], int]:
    """Play the kubelet and Volcano for one scenario; returns Volcano's phases and retryCount."""
    crash = ("PodFailed", 1, None, None, False)
    event, exit_code, reason, disruption, deleted = SCENARIOS.get(scenario, crash)
    spec = kube.get(VCJOBS, NS, job)["spec"]  # the Job exactly as the launcher created it
    task = spec["tasks"][0]["name"]
    core = kubernetes.client.CoreV1Api(kube.api_client())
    body, pod_status = evicted_pod(job, task, exit_code=exit_code, reason=reason, disruption=disruption)
    core.create_namespaced_pod(NS, body)
    core.patch_namespaced_pod_status(body["metadata"]["name"], NS, {"status": pod_status})
    if deleted:
        core.delete_namespaced_pod(body["metadata"]["name"], NS)
    phases = volcano_reacts(spec, event, exit_code)
    retry = 1 if phases[0] == "Restarting" else 0
    custom = kubernetes.client.CustomObjectsApi(kube.api_client())
    status = volcano_status(phases, task=task, pods={} if deleted else {"Failed": 1}, retry_count=retry)
    custom.patch_namespaced_custom_object_status(
        "batch.volcano.sh", "v1alpha1", NS, "jobs", job, {"status": status}
    )
    return phases, retry


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_job_volcano_ends_because_a_pod_was_taken_is_resubmitted_without_using_the_retry_budget(
    scenario: str, tmp_path: Path
) -> None:
    body = olmorun("evict", tmp_path)
    with KubeServer() as kube:
        launcher = VolcanoLauncher(NS, api_client=kube.api_client())
        reconciler = Reconciler(lambda _ns: launcher, clock=lambda: T0)
        first = _step(reconciler, body, None)
        assert [s.job_name for s in first.submitted] == ["evict-pretrain-a1"]
        phases, _ = _take_pod(kube, "evict-pretrain-a1", scenario)
        assert phases[-1] in ("Terminated", "Failed"), f"Volcano would retry on its own: {phases}"

        observed = launcher.describe("evict-pretrain-a1")
        assert (observed.state, observed.preempted) == ("Failed", True), observed
        after = _step(reconciler, body, _dump(first))
        assert [s.job_name for s in after.submitted] == ["evict-pretrain-a2"]
        [job] = after.status.phases["pretrain"].jobs
        assert (job.name, job.attempts, job.failures, job.state) == ("evict-pretrain-a2", 2, 0, "Pending")
        [resubmitted] = [e for e in after.events if e.reason == "Resubmitted"]
        assert "was preempted" in resubmitted.message and "not a failure" in resubmitted.message
        assert kube.ever_created(VCJOBS) == ["evict-pretrain-a1", "evict-pretrain-a2"]


def test_a_drained_job_is_not_replaced_while_volcano_is_still_stopping_its_pods(tmp_path: Path) -> None:
    """Terminating (Volcano deleting the pods after TerminateJob): the job still holds its save_dir."""
    body = olmorun("drain", tmp_path)
    with KubeServer() as kube:
        launcher = VolcanoLauncher(NS, api_client=kube.api_client())
        reconciler = Reconciler(lambda _ns: launcher, clock=lambda: T0)
        first = _step(reconciler, body, None)
        spec = kube.get(VCJOBS, NS, "drain-pretrain-a1")["spec"]
        phases = volcano_reacts(spec, "PodFailed", 143)
        assert phases == ["Terminating", "Terminated"]
        custom = kubernetes.client.CustomObjectsApi(kube.api_client())
        stopping = volcano_status(
            phases[:1], task=spec["tasks"][0]["name"], pods={"Running": 1}, retry_count=0
        )
        stopping["terminating"] = 1
        custom.patch_namespaced_custom_object_status(
            "batch.volcano.sh", "v1alpha1", NS, "jobs", "drain-pretrain-a1", {"status": stopping}
        )
        observed = launcher.describe("drain-pretrain-a1")
        assert (observed.state, observed.terminating) == ("Running", True)
        waiting = _step(reconciler, body, _dump(first))
        assert waiting.submitted == [] and waiting.cancelled == []
        assert waiting.status.phases["pretrain"].jobs[0].name == "drain-pretrain-a1"


def test_a_crash_is_a_failure_volcano_does_not_retry_and_the_planner_counts(tmp_path: Path) -> None:
    body = olmorun("crash", tmp_path, backoff=30)
    with KubeServer() as kube:
        launcher = VolcanoLauncher(NS, api_client=kube.api_client())
        reconciler = Reconciler(lambda _ns: launcher, clock=lambda: T0)
        first = _step(reconciler, body, None)
        phases, retry = _take_pod(kube, "crash-pretrain-a1", "crash")
        assert (phases, retry) == (["Restarting", "Failed"], 1)  # maxRetry 1: Failed at the first restart
        observed = launcher.describe("crash-pretrain-a1")
        assert (observed.state, observed.exit_code, observed.preempted) == ("Failed", 1, False)
        after = _step(reconciler, body, _dump(first))
        [job] = after.status.phases["pretrain"].jobs
        assert (job.state, job.failures, job.attempts) == ("Retrying", 1, 1)
        assert after.submitted == [] and kube.ever_created(VCJOBS) == ["crash-pretrain-a1"]


def test_torchx_defaults_would_let_volcano_retry_behind_the_planner() -> None:
    """Why the launcher overrides torchx: `maxRetry: 0` and no policies (what torchx writes for a role
    without retries) let Volcano create an evicted pod again, and restart up to 3 times on its own."""
    torchx_spec = {"maxRetry": 0}
    assert volcano_reacts(torchx_spec, "PodEvicted") == ["Running"]  # the pod created again, uncounted
    restart_all = {"maxRetry": 0, "policies": [{"event": "PodFailed", "action": "RestartJob"}]}
    assert volcano_reacts(restart_all, "PodFailed", 1) == ["Restarting", "Pending"]  # 0 means 3 retries
    ours = {"maxRetry": 1, "policies": [{"event": "PodFailed", "action": "RestartJob"}]}
    assert volcano_reacts(ours, "PodFailed", 1) == ["Restarting", "Failed"]
