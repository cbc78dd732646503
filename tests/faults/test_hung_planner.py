"""A hung job (spec.retry.hangTimeoutMinutes), decided by the pure planner on a fake clock.

Each case is a sequence of observations at chosen instants (tests/operator/test_plan.py's builders):
the hang clock starts when the job is first seen running, restarts at each new step in its metrics,
stops while it is queued; a job silent for the timeout is cancelled, fails with reason Hung (using the
retry budget) and is resubmitted after the backoff, once the cancelled attempt is gone.
The same behaviour end to end, on a real job made to hang: tests/faults/test_hung_local.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from olmo_operator.actions import CancelJob, JobObservation, MetricsLine, SubmitJob
from olmo_operator.api import SpecError, parse_olmorun
from tests.operator.test_plan import T0, make_run, running, step

RETRY = {"backoffLimit": 1, "backoffSeconds": 10, "maxBackoffSeconds": 10, "hangTimeoutMinutes": 5}


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def started() -> tuple[object, str]:
    run, first = step(make_run(retry=RETRY))
    [submit] = [a for a in first.actions if isinstance(a, SubmitJob)]
    return run, submit.job_name


def test_a_job_whose_steps_stop_for_the_timeout_is_cancelled_and_fails_as_hung() -> None:
    run, name = started()
    run, plan = step(run, {name: running(name, 3)}, now=at(1))
    assert run.status.phases["pretrain"].jobs[0].progress_at == "2026-01-01T12:01:00Z"
    assert plan.requeue_after == pytest.approx(5 * 60)  # the hang deadline is a timed decision
    run, plan = step(run, {name: running(name, 3)}, now=at(5.9))  # silent 4.9 min: not yet
    assert not [a for a in plan.actions if isinstance(a, CancelJob)]
    assert run.status.phases["pretrain"].jobs[0].state == "Running"

    run, plan = step(run, {name: running(name, 3)}, now=at(6))  # silent 5 min since 12:01
    job = run.status.phases["pretrain"].jobs[0]
    assert [a for a in plan.actions if isinstance(a, CancelJob)] == [CancelJob(name, "hung")]
    assert (job.state, job.failures, job.attempts) == ("Retrying", 1, 1)
    assert job.message.startswith("Hung: no new step in metrics.jsonl for 5 min (step 3); cancelled")
    assert run.status.phases["pretrain"].message == f"job {name}: {job.message}"
    [event] = [e for e in plan.events if e.type == "Warning"]
    assert (event.reason, event.message) == ("Hung", f"job {name}: {job.message}")
    assert not [a for a in plan.actions if isinstance(a, SubmitJob)]

    # The retry waits for the backoff, then for the cancelled attempt to be gone, then resumes.
    run, plan = step(
        run, {name: JobObservation(name, "Running", terminating=True)}, now=at(6) + dt.timedelta(seconds=11)
    )
    assert plan.actions == [] and run.status.phases["pretrain"].jobs[0].state == "Retrying"
    run, plan = step(run, {name: JobObservation(name, "Missing")}, now=at(6.5))
    [submit] = [a for a in plan.actions if isinstance(a, SubmitJob)]
    assert (submit.attempt, submit.write_config) == (2, False)  # the same config: resumes from its checkpoint
    job = run.status.phases["pretrain"].jobs[0]
    assert (job.name, job.state, job.failures, job.progress_at) == (submit.job_name, "Pending", 1, None)


def test_every_new_step_restarts_the_clock_and_a_queued_job_is_never_hung() -> None:
    run, name = started()
    queued = JobObservation(name, "Pending")
    run, _ = step(run, {name: queued}, now=at(1))
    run, plan = step(run, {name: queued}, now=at(60))  # an hour in the queue waiting for GPUs
    assert run.status.phases["pretrain"].jobs[0].progress_at is None and plan.events == []
    for minute, step_ in [(61, 1), (65, 2), (69, 3), (73, 4)]:  # a step every 4 min: never 5 silent
        run, plan = step(run, {name: running(name, step_)}, now=at(minute))
        assert run.status.phases["pretrain"].jobs[0].state == "Running"
        assert run.status.phases["pretrain"].jobs[0].progress_at == at(minute).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Stopping pods (Volcano Terminating, a drain) are not a hang either.
    run, plan = step(run, {name: JobObservation(name, "Running", terminating=True)}, now=at(90))
    assert not [a for a in plan.actions if isinstance(a, CancelJob)]


def test_a_job_hung_before_its_first_step_is_caught_too() -> None:
    run, name = started()
    silent = JobObservation(name, "Running")  # no metrics at all (stuck in start-up or rendezvous)
    run, _ = step(run, {name: silent}, now=at(0))
    run, plan = step(run, {name: silent}, now=at(5))
    assert [a for a in plan.actions if isinstance(a, CancelJob)] == [CancelJob(name, "hung")]
    assert (
        run.status.phases["pretrain"]
        .jobs[0]
        .message.startswith("Hung: no new step in metrics.jsonl for 5 min (no step yet)")
    )


def test_hangs_use_the_retry_budget_and_the_last_one_fails_the_run() -> None:
    run, name = started()
    run, _ = step(run, {name: running(name, 3)}, now=at(0))
    run, _ = step(run, {name: running(name, 3)}, now=at(5))  # hung once: retry 1/1
    run, plan = step(run, {name: JobObservation(name, "Missing")}, now=at(6))
    [submit] = [a for a in plan.actions if isinstance(a, SubmitJob)]
    second = submit.job_name
    run, _ = step(run, {second: running(second, 3)}, now=at(7))  # the resumed attempt: clock from now
    run, plan = step(run, {second: running(second, 3)}, now=at(12))
    job = run.status.phases["pretrain"].jobs[0]
    assert (job.state, job.failures) == ("Failed", 2)
    assert job.message.startswith("Hung: ") and "gave up after 2 failure(s) (backoffLimit 1)" in job.message
    assert [a for a in plan.actions if isinstance(a, CancelJob)] == [CancelJob(second, "hung")]
    assert run.status.stage == "Failed" and "Hung" in run.status.phases["pretrain"].message


def test_without_a_timeout_nothing_is_ever_hung() -> None:
    run, plan = step(make_run())
    name = next(a for a in plan.actions if isinstance(a, SubmitJob)).job_name
    run, _ = step(run, {name: running(name, 3)}, now=at(0))
    run, plan = step(
        run, {name: JobObservation(name, "Running", metrics=MetricsLine(step=3))}, now=at(10_000)
    )
    assert run.status.phases["pretrain"].jobs[0].state == "Running" and plan.events == []
    assert run.status.phases["pretrain"].jobs[0].progress_at is None


@pytest.mark.parametrize("bad", [0, -1, 10081, "soon"])
def test_a_bad_timeout_is_refused_naming_the_field(bad: object) -> None:
    document = make_run().model_dump(mode="json", by_alias=True)
    document["spec"]["retry"]["hangTimeoutMinutes"] = bad
    with pytest.raises(SpecError, match=r"spec\.retry\.hangTimeoutMinutes"):
        parse_olmorun(document)


def test_a_resubmitted_attempt_starts_a_fresh_clock() -> None:
    """A preempted job resubmitted long after its last step is not hung the moment it runs again."""
    run, name = started()
    run, _ = step(run, {name: running(name, 3)}, now=at(0))
    run, plan = step(run, {name: JobObservation(name, "Failed", exit_code=143)}, now=at(4))
    [submit] = [a for a in plan.actions if isinstance(a, SubmitJob)]
    assert run.status.phases["pretrain"].jobs[0].progress_at is None
    run, plan = step(run, {submit.job_name: running(submit.job_name, 3)}, now=at(30))
    job = run.status.phases["pretrain"].jobs[0]
    assert (job.state, job.failures, job.progress_at) == ("Running", 0, "2026-01-01T12:30:00Z")
    assert not [a for a in plan.actions if isinstance(a, CancelJob)]
