"""The real operator (kopf + our handlers) on a misbehaving API server: the kmock emulator with faults
injected (tests/operator/kube.py: Emulator.inject) - 409 conflicts, 429 with Retry-After, 500s, watch
streams cut mid-event, answers later than the client's timeout, and the operator killed between a
job's creation and the status write that records it.

After every fault, the same invariants (`assert_sound`): no job created twice (one successful CREATE
per job name, counted from the emulator's store), no status field lost (the status is what the planner
decides for the cluster as it is), every condition keeps its lastTransitionTime across the fault (no
condition changed status), and no Event repeated. The test plays the user and the Volcano controller,
as tests/e2e/test_operator_kmock.py does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from olmo_operator import api
from tests.operator.kube import OLMORUNS, TEST_AGENT, VCJOBS, KubeServer, OperatorThread, wait_for
from tests.operator.operator_env import (
    NS,
    apply,
    commit_checkpoint,
    condition,
    events_of,
    jobs_of,
    olmorun,
    phase_state,
    set_job_phase,
    status_of,
)

STATUS = r"/olmoruns/[^/]+/status$"
JOBS = r"/namespaces/default/jobs$"  # the Volcano Jobs' collection: a CREATE


def transitions(kube: KubeServer, run: str) -> dict[str, tuple[str, str]]:
    """Each condition's (status, lastTransitionTime)."""
    return {
        c["type"]: (c["status"], c["lastTransitionTime"]) for c in status_of(kube, run).get("conditions", [])
    }


def assert_sound(kube: KubeServer, run: str, conditions_before: dict[str, tuple[str, str]]) -> None:
    created = kube.ever_created(VCJOBS)
    assert len(created) == len(set(created)), f"a job was created twice: {created}"
    assert transitions(kube, run) == conditions_before, "a condition changed or lost its lastTransitionTime"
    # Our events (Normal, Warning); kopf's own reports of each failed request (type Error) are not ours.
    seen = [(e["type"], e["reason"], e["message"]) for e in events_of(kube, run) if e["type"] != "Error"]
    assert len(seen) == len(set(seen)), f"an event was repeated: {seen}"
    assert kube.emulator.rejections == [], kube.emulator.rejections


def running_run(kube: KubeServer, kubectl: Any, name: str, tmp_path: Path) -> dict[str, Any]:
    """A run whose pretrain job runs, its status settled; returns the OlmoRun body."""
    body = olmorun(name, tmp_path)
    apply(kubectl, body)
    wait_for(lambda: f"{name}-pretrain-a1" in jobs_of(kube, name), what="the job")
    set_job_phase(kubectl, f"{name}-pretrain-a1", "Running")
    wait_for(lambda: phase_state(kube, name, "pretrain") == "Running", what="Running")
    return body


def progresses_to_success(kube: KubeServer, kubectl: Any, body: dict[str, Any]) -> None:
    """The job commits its final checkpoint and completes: the run must succeed despite the faults."""
    name = body["metadata"]["name"]
    commit_checkpoint(body, "pretrain", 6198, 4)
    set_job_phase(kubectl, f"{name}-pretrain-a1", "Completed")
    wait_for(
        lambda: phase_state(kube, name, "pretrain") == "Succeeded", timeout=30, what="pretrain Succeeded"
    )
    status = status_of(kube, name)
    assert status["stage"] == "Succeeded" and status["storage"] and status["observedGeneration"] == 1
    job = status["phases"]["pretrain"]["jobs"][0]
    assert (job["name"], job["state"], job["attempts"]) == (f"{name}-pretrain-a1", "Succeeded", 1)
    assert job["archive"].endswith("/archive/pretrain/step4") and status["phases"]["pretrain"]["archive"]


def test_conflicts_429s_and_500s_on_every_write_lose_nothing_and_duplicate_nothing(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    with OperatorThread(kube):
        body = running_run(kube, kubectl, "errs", tmp_path)
        before = transitions(kube, "errs")
        faults = [
            kube.emulator.inject("PATCH", STATUS, times=2, status=409),
            kube.emulator.inject("PATCH", STATUS, times=1, status=429, retry_after=2),
            kube.emulator.inject("PATCH", STATUS, times=2, status=500),
            kube.emulator.inject("POST", r"/events$", times=1, status=500),
        ]
        progresses_to_success(kube, kubectl, body)
        assert all(f.hits == f.times for f in faults), [(f.status, f.hits) for f in faults]
        # The 429's Retry-After was obeyed: the next status write came no sooner than 2 s later.
        writes = [
            c
            for c in kube.calls
            if (c.method == "PATCH" and c.resource.endswith("/errs/status"))
            or (c.subresource == "status" and c.name == "errs" and c.agent != TEST_AGENT)
        ]
        throttled = next(i for i, c in enumerate(writes) if c.fault == 429)
        assert writes[throttled + 1].at - writes[throttled].at >= 2.0 - 0.1
        before["Succeeded"] = transitions(kube, "errs")["Succeeded"]  # the one true transition
        before["Progressing"] = transitions(kube, "errs")["Progressing"]
        assert before["Succeeded"][0] == "True" and before["Progressing"][0] == "False"
        wait_for(
            lambda: {"PhaseSucceeded", "Archived"} <= {e["reason"] for e in events_of(kube, "errs")},
            what="the events, posted once their status is written",
        )
        assert_sound(kube, "errs", before)
        reasons = [e["reason"] for e in events_of(kube, "errs")]
        assert reasons.count("PhaseSucceeded") == 1 and reasons.count("Archived") == 1


def test_a_create_refused_with_429_then_500_is_retried_and_creates_one_job(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    throttled = kube.emulator.inject("POST", JOBS, times=1, status=429, retry_after=1)
    broken = kube.emulator.inject("POST", JOBS, times=2, status=500)
    with OperatorThread(kube):
        body = running_run(kube, kubectl, "create", tmp_path)
        assert (throttled.hits, broken.hits) == (1, 2)
        refused = [c.fault for c in kube.calls if c.fault is not None]
        assert refused == [429, 500, 500]  # then the CREATE that worked, once
        assert kube.ever_created(VCJOBS) == ["create-pretrain-a1"]
        before = transitions(kube, "create")
        assert_sound(kube, "create", before)
        progresses_to_success(kube, kubectl, body)


def test_a_create_answered_after_the_client_gave_up_is_found_not_duplicated(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    """The API server creates the job but answers after the launcher's timeout: the step fails and is
    retried; its second CREATE meets 409 (the job exists), which is success. One job."""
    late = kube.emulator.inject("POST", JOBS, times=1, delay=2.0)
    with OperatorThread(kube, request_timeout=1.0) as operator:
        body = running_run(kube, kubectl, "late", tmp_path)
        assert late.hits == 1
        assert operator.metrics.value("olmorun_reconcile_errors_total", error="temporary") >= 1
        assert kube.ever_created(VCJOBS) == ["late-pretrain-a1"]
        # A status write answered late too (kopf's own client times out and writes it again).
        slow = kube.emulator.inject("PATCH", STATUS, times=1, delay=2.0)
        before = transitions(kube, "late")
        progresses_to_success(kube, kubectl, body)
        assert slow.hits == 1
        before.update({k: transitions(kube, "late")[k] for k in ("Succeeded", "Progressing")})
        assert_sound(kube, "late", before)


def test_watch_streams_cut_mid_event_still_deliver_every_change(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    cut = kube.emulator.inject("WATCH", r"/olmoruns$", times=3, drop_after=0)
    with OperatorThread(kube):
        running_run(kube, kubectl, "watch", tmp_path)
        before = transitions(kube, "watch")
        # A spec change arrives only through the watch: suspend the run, the job must be cancelled.
        kubectl.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, NS, api.PLURAL, "watch", {"spec": {"suspend": True}}
        )
        wait_for(
            lambda: "watch-pretrain-a1" not in jobs_of(kube, "watch"), what="the job cancelled on suspend"
        )
        wait_for(lambda: condition(kube, "watch", "Suspended").get("status") == "True", what="Suspended")
        assert cut.hits == cut.times
        kubectl.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, NS, api.PLURAL, "watch", {"spec": {"suspend": False}}
        )
        wait_for(lambda: "watch-pretrain-a2" in jobs_of(kube, "watch"), what="resumed as a new attempt")
        for kind in ("Invalid",):  # untouched by suspend and resume
            assert transitions(kube, "watch")[kind] == before[kind]
        created = kube.ever_created(VCJOBS)
        assert created == ["watch-pretrain-a1", "watch-pretrain-a2"], created
        seen = [(e["reason"], e["message"]) for e in events_of(kube, "watch") if e["type"] != "Error"]
        assert len(seen) == len(set(seen)), seen


def test_operator_killed_between_submit_and_status_write_creates_no_second_job(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    """Every status write fails while the first operator runs: it creates the job and dies before any
    status records it. The next operator plans from a status without the job: its CREATE meets 409."""
    lost = kube.emulator.inject("PATCH", STATUS, times=10_000, status=500)
    with OperatorThread(kube):
        body = olmorun("killed", tmp_path)
        apply(kubectl, body)
        wait_for(lambda: "killed-pretrain-a1" in jobs_of(kube, "killed"), what="the job")
        wait_for(lambda: lost.hits >= 1, what="a status write, refused")
    assert "status" not in (kube.get(OLMORUNS, NS, "killed") or {}), "a status write got through"
    lost.times = lost.hits  # the API server recovers

    with OperatorThread(kube) as again:
        wait_for(
            lambda: (
                phase_state(kube, "killed", "pretrain") == "Pending"
                and status_of(kube, "killed")["phases"]["pretrain"]["jobs"][0]["attempts"] == 1
            ),
            what="the status",
        )
        assert kube.ever_created(VCJOBS) == ["killed-pretrain-a1"]
        assert (
            again.metrics.value("olmorun_job_submissions_total") == 1
        )  # submitted: answered 409, not created
        before = transitions(kube, "killed")
        set_job_phase(kubectl, "killed-pretrain-a1", "Running")
        wait_for(lambda: phase_state(kube, "killed", "pretrain") == "Running", what="Running")
        before["Progressing"] = transitions(kube, "killed")["Progressing"]
        assert_sound(kube, "killed", {**before, "Progressing": transitions(kube, "killed")["Progressing"]})
        progresses_to_success(kube, kubectl, body)


def test_a_retry_shorter_than_the_resync_fires_at_its_backoff(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    """Resync 60 s, backoff 2 s: the failure seen at the operator's start (resume) is retried about
    2 s later, not at the next timer tick a minute later (the timer never ticks in this test)."""
    body = olmorun("ontime", tmp_path, backoff=2)
    with OperatorThread(kube):
        apply(kubectl, body)
        wait_for(lambda: "ontime-pretrain-a1" in jobs_of(kube, "ontime"), what="the job")
        wait_for(lambda: status_of(kube, "ontime").get("phases"), what="the status")
    set_job_phase(kubectl, "ontime-pretrain-a1", "Failed")
    with OperatorThread(kube, resync_seconds=60):
        start = time.monotonic()
        wait_for(lambda: phase_state(kube, "ontime", "pretrain") == "Retrying", what="Retrying")
        seen_failed = max(
            c.at for c in kube.calls if c.subresource == "status" and c.name == "ontime" and c.fault is None
        )
        wait_for(lambda: "ontime-pretrain-a2" in jobs_of(kube, "ontime"), timeout=30, what="the retry")
        retried = min(c.at for c in kube.calls if c.action == "CREATE" and c.name == "ontime-pretrain-a2")
        assert retried - seen_failed >= 2.0 - 1.0, "retried before its backoff"  # retryAt has 1 s resolution
        assert retried - start < 20, "the retry waited for the resync tick"
        # The CREATE comes before the step's status write, and its events are posted after that write.
        wait_for(
            lambda: "Retrying" in [e["reason"] for e in events_of(kube, "ontime")], what="the Retrying event"
        )
        errors = [e for e in events_of(kube, "ontime") if e["type"] not in ("Normal", "Warning")]
        assert errors == [], "a scheduled retry was reported as an error"
        reasons = [e["reason"] for e in events_of(kube, "ontime")]
        assert reasons.count("JobFailed") == 1 and reasons.count("Retrying") == 1, reasons
    assert kube.ever_created(VCJOBS) == ["ontime-pretrain-a1", "ontime-pretrain-a2"]
