"""Table-driven tests of the pure planner: every transition from (spec, status, observation, now).

Builders keep each case to the lines that matter (JobSet's `testutils.MakeJobSet(...).Obj()` style):
`make_run(...)` builds a validated OlmoRun, `step(run, jobs=..., archives=...)` plans once and returns
the run with its new status, so a case reads as a sequence of observations.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from olmo_operator import layout
from olmo_operator.api import JobStatus, OlmoRun, PhaseStatus, parse_olmorun
from olmo_operator.plan import (
    ArchiveCheckpoint,
    ArchiveResult,
    CancelJob,
    Emit,
    JobObservation,
    Metrics,
    Observation,
    Plan,
    SubmitJob,
    WriteRunManifest,
    condition,
    invalid_status,
    is_finished,
    phase_spec_hash,
    plan,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
DATA = {"sequenceLength": 64, "sources": [{"name": "g", "synthetic": {"numTokens": "1M"}}]}
BATCH = {"globalBatchSize": 4, "microBatchSize": 2}


def pretrain(**extra: Any) -> dict[str, Any]:
    return {"name": "pretrain", "kind": "pretrain", "maxSteps": 10, "data": DATA, "batch": BATCH, **extra}


def anneal(seeds: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    phase = {
        "name": "anneal",
        "kind": "anneal",
        "from": "pretrain",
        "maxSteps": 5,
        "data": DATA,
        "batch": BATCH,
    }
    if seeds:
        phase["seeds"] = seeds
    return {**phase, **extra}


SOUP = {"name": "soup", "kind": "soup", "from": "anneal"}
SFT = {"name": "sft", "kind": "sft", "from": "soup", "sft": {"data": {"paths": ["x.jsonl"]}}}


def make_run(*phases: dict[str, Any], generation: int = 1, **spec: Any) -> OlmoRun:
    document = {
        "apiVersion": "olmorun.dev/v1alpha1",
        "kind": "OlmoRun",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": {
            "image": "img@sha256:abc",
            "model": {"preset": "tiny"},
            "storage": {"uri": "s3://b/root"},
            "cluster": {"gpusPerNode": 0, "procsPerNode": 2},
            "retry": {"backoffLimit": 2, "backoffSeconds": 10, "maxBackoffSeconds": 15},
            **spec,
            "phases": list(phases) or [pretrain()],
        },
    }
    return parse_olmorun(document)


def step(
    run: OlmoRun,
    jobs: dict[str, JobObservation] | None = None,
    archives: list[ArchiveResult] | None = None,
    now: dt.datetime = T0,
) -> tuple[OlmoRun, Plan]:
    """Plan once; the run comes back carrying the new status (as the API server would store it)."""
    result = plan(run, Observation(jobs=jobs or {}, archives={a.key: a for a in archives or []}), now)
    return run.model_copy(update={"status": result.status}), result


def running(name: str, step_: int = 3, loss: float = 2.5) -> JobObservation:
    return JobObservation(name, "Running", metrics=Metrics(step=step_, tokens=step_ * 100, loss=loss))


def done(name: str, save: str, step_: int = 10) -> JobObservation:
    return JobObservation(
        name, "Succeeded", exit_code=0, checkpoint=(step_, f"{save}/checkpoints/step{step_}")
    )


def archived(action: ArchiveCheckpoint, ok: bool = True, retryable: bool = False) -> ArchiveResult:
    return ArchiveResult(
        action.key,
        action.src,
        action.dst,
        ok=ok,
        message="" if ok else "sha256 mismatch",
        retryable=retryable,
    )


def of(result: Plan, kind: type) -> list[Any]:
    return [a for a in result.actions if isinstance(a, kind)]


def reasons(result: Plan) -> list[str]:
    return [e.reason for e in result.events]


def message(run: OlmoRun, type_: str) -> str:
    found = condition(run.status, type_)
    assert found is not None, f"no {type_} condition"
    return found.message


def cond(run: OlmoRun, type_: str) -> tuple[str, str]:
    c = condition(run.status, type_)
    assert c is not None
    return c.status, c.reason


def job(run: OlmoRun, phase: str, index: int = 0) -> JobStatus:
    return run.status.phases[phase].jobs[index]


def finish_phase(run: OlmoRun, phase: str) -> OlmoRun:
    """Drive every job of a started phase to success and archive: (observe done) -> (archive ok)."""
    spec = run.phase(phase)
    jobs = {j.name: done(j.name, layout.save_dir(run, spec, j.seed)) for j in run.status.phases[phase].jobs}
    run, result = step(run, jobs)
    run, _ = step(run, jobs, [archived(a) for a in of(result, ArchiveCheckpoint)])
    return run


# ---------------------------------------------------------------------------------------------
# Start, progress, success
# ---------------------------------------------------------------------------------------------


def test_first_step_writes_manifest_and_submits_root_phase_only() -> None:
    run, result = step(make_run(pretrain(), anneal()))
    [manifest] = of(result, WriteRunManifest)
    assert manifest.uri == "s3://b/root/ns/r/run.json"
    assert manifest.document["seeds"] == {"pretrain": [6198], "anneal": [6198]}
    [submit] = of(result, SubmitJob)
    assert (submit.phase, submit.seed, submit.attempt, submit.job_name) == (
        "pretrain",
        6198,
        1,
        "r-pretrain-a1",
    )
    assert submit.config_uri == "s3://b/root/ns/r/phases/pretrain/config.json"
    assert submit.train_config.save_dir == "s3://b/root/ns/r/phases/pretrain"
    assert submit.write_config
    assert run.status.phases["pretrain"].state == "Pending"
    assert run.status.phases["pretrain"].spec_hash == phase_spec_hash(run, run.phase("pretrain"))
    assert run.status.phases["anneal"].state == "Pending"
    assert "waiting for phase 'pretrain'" in run.status.phases["anneal"].message
    assert cond(run, "Succeeded") == ("Unknown", "Running")
    assert cond(run, "Progressing") == ("True", "Running")
    assert cond(run, "Invalid") == ("False", "Valid")
    assert cond(run, "Suspended") == ("False", "NotSuspended")
    assert run.status.storage == "s3://b/root/ns/r"
    assert run.status.observed_generation == 1
    # The manifest is written once: a second step does not ask again.
    _, again = step(run, {"r-pretrain-a1": running("r-pretrain-a1")})
    assert not of(again, WriteRunManifest) and not of(again, SubmitJob)


def test_progress_is_recorded_per_job_phase_and_run() -> None:
    run, _ = step(make_run())
    obs = JobObservation(
        "r-pretrain-a1", "Running", checkpoint=(2, "s3://b/root/ns/r/phases/pretrain/checkpoints/step2"),
        metrics=Metrics(step=4, tokens=4096, loss=3.25, tokens_per_s=100.0),
    )  # fmt: skip
    run, result = step(run, {"r-pretrain-a1": obs})
    assert not result.actions
    j = job(run, "pretrain")
    assert (j.state, j.step, j.tokens, j.last_loss) == ("Running", 4, 4096, 3.25)
    assert j.checkpoint and j.checkpoint.endswith("/step2")
    ps = run.status.phases["pretrain"]
    assert (ps.state, ps.step, ps.tokens, ps.last_loss) == ("Running", 4, 4096, 3.25)
    assert (run.status.step, run.status.tokens, run.status.last_loss, run.status.stage) == (
        4,
        4096,
        3.25,
        "pretrain",
    )


def test_success_archives_then_children_start_from_the_verified_archive() -> None:
    run, _ = step(make_run(pretrain(), anneal()))
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    run, result = step(run, {"r-pretrain-a1": done("r-pretrain-a1", save, 10)})
    [action] = of(result, ArchiveCheckpoint)
    assert action.src == f"{save}/checkpoints/step10"
    assert action.dst == "s3://b/root/ns/r/archive/pretrain/step10"
    assert run.status.phases["pretrain"].state == "Running"  # not done until archived
    assert run.status.phases["pretrain"].message == "archiving final checkpoint(s)"
    assert not of(result, SubmitJob)
    run, result = step(run, archives=[archived(action)])
    ps = run.status.phases["pretrain"]
    assert (ps.state, ps.archive, ps.checkpoint) == ("Succeeded", action.dst, action.src)
    assert ps.finished_at == "2026-01-01T12:00:00Z"
    [submit] = of(result, SubmitJob)
    assert submit.phase == "anneal" and submit.train_config.init_from == action.dst
    assert {"Archived", "PhaseSucceeded", "PhaseStarted"} <= set(reasons(result))


def test_archive_disabled_children_start_from_the_scratch_checkpoint() -> None:
    run, _ = step(make_run(pretrain(archive=False), anneal()))
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    run, result = step(run, {"r-pretrain-a1": done("r-pretrain-a1", save, 10)})
    assert not of(result, ArchiveCheckpoint)
    assert run.status.phases["pretrain"].state == "Succeeded"
    [submit] = of(result, SubmitJob)
    assert submit.train_config.init_from == f"{save}/checkpoints/step10"


def test_whole_pipeline_fans_out_seeds_then_soups_them_and_succeeds() -> None:
    run, _ = step(make_run(pretrain(), anneal([42, 7]), SOUP))
    run = finish_phase(run, "pretrain")
    names = [j.name for j in run.status.phases["anneal"].jobs]
    assert names == ["r-anneal-s42-a1", "r-anneal-s7-a1"]
    assert run.status.stage == "anneal"
    run = finish_phase(run, "anneal")
    soup = run.status.phases["soup"]
    assert [j.name for j in soup.jobs] == ["r-soup-a1"]
    assert run.status.phases["anneal"].archive is None  # per seed: on the jobs
    assert [j.archive for j in run.status.phases["anneal"].jobs] == [
        "s3://b/root/ns/r/archive/anneal-s42/step10",
        "s3://b/root/ns/r/archive/anneal-s7/step10",
    ]
    run = finish_phase(run, "soup")
    assert cond(run, "Succeeded") == ("True", "Succeeded")
    assert cond(run, "Progressing") == ("False", "Succeeded")
    assert run.status.stage == "Succeeded"
    assert is_finished(run.status)
    _, idle = step(run)
    assert not idle.actions  # a finished run does nothing more


def test_soup_job_averages_every_seed_archive_and_anneal_seeds_its_data() -> None:
    run, _ = step(make_run(pretrain(), anneal([42, 7]), SOUP))
    run = finish_phase(run, "pretrain")
    anneal_jobs = run.status.phases["anneal"].jobs
    assert [j.seed for j in anneal_jobs] == [42, 7]
    spec = run.phase("anneal")
    jobs = {j.name: done(j.name, layout.save_dir(run, spec, j.seed), 5) for j in anneal_jobs}
    run, result = step(run, jobs)
    run, result = step(run, jobs, [archived(a) for a in of(result, ArchiveCheckpoint)])
    [submit] = of(result, SubmitJob)
    assert submit.train_config.kind == "soup"
    assert submit.train_config.soup_from == [
        "s3://b/root/ns/r/archive/anneal-s42/step5",
        "s3://b/root/ns/r/archive/anneal-s7/step5",
    ]


def test_anneal_jobs_get_seeded_configs_and_per_seed_paths() -> None:
    run, _ = step(make_run(pretrain(), anneal([42, 7])))
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    run, result = step(run, {"r-pretrain-a1": done("r-pretrain-a1", save)})
    run, result = step(run, archives=[archived(a) for a in of(result, ArchiveCheckpoint)])
    submits = of(result, SubmitJob)
    assert [(s.seed, s.config_uri) for s in submits] == [
        (42, "s3://b/root/ns/r/phases/anneal/s42/config.json"),
        (7, "s3://b/root/ns/r/phases/anneal/s7/config.json"),
    ]
    assert [s.train_config.data.seed for s in submits] == [42, 7]
    assert [s.train_config.save_dir for s in submits] == [
        "s3://b/root/ns/r/phases/anneal/s42",
        "s3://b/root/ns/r/phases/anneal/s7",
    ]


# ---------------------------------------------------------------------------------------------
# Failures, retries, preemption, lost jobs
# ---------------------------------------------------------------------------------------------

FAILED = JobObservation("r-pretrain-a1", "Failed", exit_code=1, message="exit code 1")


@pytest.mark.parametrize(
    ("observed", "counts", "reason"),
    [
        (JobObservation("r-pretrain-a1", "Failed", exit_code=143), False, "Resubmitted"),
        (JobObservation("r-pretrain-a1", "Failed", exit_code=1, preempted=True), False, "Resubmitted"),
        (JobObservation("r-pretrain-a1", "Missing"), False, "Resubmitted"),
        (FAILED, True, "JobFailed"),
    ],
    ids=["exit-143", "preempted-flag", "missing", "failure"],
)
def test_failed_preempted_or_lost_job(observed: JobObservation, counts: bool, reason: str) -> None:
    run, _ = step(make_run())
    run, result = step(run, {"r-pretrain-a1": observed})
    j = job(run, "pretrain")
    assert reason in reasons(result)
    if counts:
        assert (j.state, j.failures, j.attempts, j.retry_at) == ("Retrying", 1, 1, "2026-01-01T12:00:10Z")
        assert not of(result, SubmitJob)
        assert result.requeue_after == 10
        assert run.status.phases["pretrain"].state == "Retrying"
    else:
        [submit] = of(result, SubmitJob)
        assert (submit.attempt, submit.job_name, submit.write_config) == (2, "r-pretrain-a2", False)
        assert (j.state, j.failures, j.attempts, j.name) == ("Pending", 0, 2, "r-pretrain-a2")
    assert cond(run, "Succeeded")[0] == "Unknown"


def test_retry_backoff_doubles_is_capped_and_gives_up_after_the_limit() -> None:
    run, _ = step(make_run())  # backoffSeconds 10, max 15, limit 2
    run, _ = step(run, {"r-pretrain-a1": FAILED})
    assert job(run, "pretrain").retry_at == "2026-01-01T12:00:10Z"
    run, early = step(run, now=T0 + dt.timedelta(seconds=9))
    assert not of(early, SubmitJob) and early.requeue_after == pytest.approx(1.0)
    run, due = step(run, now=T0 + dt.timedelta(seconds=10))
    [submit] = of(due, SubmitJob)
    assert submit.job_name == "r-pretrain-a2" and not submit.write_config
    assert "Retrying" in reasons(due)
    t1 = T0 + dt.timedelta(seconds=10)
    run, _ = step(run, {"r-pretrain-a2": JobObservation("r-pretrain-a2", "Failed", exit_code=1)}, now=t1)
    assert job(run, "pretrain").retry_at == "2026-01-01T12:00:25Z"  # 20s doubled, capped at 15
    run, _ = step(run, now=t1 + dt.timedelta(seconds=15))
    run, result = step(run, {"r-pretrain-a3": JobObservation("r-pretrain-a3", "Failed", exit_code=1)}, now=t1)
    j = job(run, "pretrain")
    assert (j.state, j.failures, j.attempts) == ("Failed", 3, 3)
    assert "gave up after 3 failure(s) (backoffLimit 2)" in j.message
    assert run.status.phases["pretrain"].state == "Failed"
    assert cond(run, "Succeeded") == ("False", "PhaseFailed")
    assert "phase 'pretrain' failed" in message(run, "Succeeded")
    assert cond(run, "Progressing") == ("False", "PhaseFailed")
    assert run.status.stage == "Failed" and is_finished(run.status)
    assert "PhaseFailed" in reasons(result)


def test_preemptions_never_exhaust_the_backoff_limit() -> None:
    run, _ = step(make_run())
    for attempt in range(1, 6):
        name = f"r-pretrain-a{attempt}"
        run, result = step(run, {name: JobObservation(name, "Failed", exit_code=143)})
        assert [s.attempt for s in of(result, SubmitJob)] == [attempt + 1]
    assert job(run, "pretrain").failures == 0


def test_success_without_a_checkpoint_is_a_failure_of_the_phase() -> None:
    run, _ = step(make_run(retry={"backoffLimit": 0}))
    run, _ = step(run, {"r-pretrain-a1": JobObservation("r-pretrain-a1", "Succeeded", exit_code=0)})
    assert job(run, "pretrain").state == "Failed"
    assert "no committed checkpoint" in run.status.phases["pretrain"].message


def test_one_failed_seed_fails_the_run_and_cancels_its_siblings() -> None:
    run, _ = step(make_run(pretrain(), anneal([1, 2]), retry={"backoffLimit": 0}))
    run = finish_phase(run, "pretrain")
    jobs = {
        "r-anneal-s1-a1": JobObservation("r-anneal-s1-a1", "Failed", exit_code=1, message="OOM"),
        "r-anneal-s2-a1": running("r-anneal-s2-a1"),
    }
    run, result = step(run, jobs)
    assert [c.job_name for c in of(result, CancelJob)] == ["r-anneal-s2-a1"]
    assert run.status.phases["anneal"].state == "Failed"
    assert "OOM" in message(run, "Succeeded")
    assert run.status.stage == "Failed"


def test_archive_verification_failure_fails_the_phase_but_io_errors_retry() -> None:
    run, _ = step(make_run(retry={"backoffLimit": 0}))
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    run, result = step(run, {"r-pretrain-a1": done("r-pretrain-a1", save)})
    [action] = of(result, ArchiveCheckpoint)
    retried, again = step(run, archives=[archived(action, ok=False, retryable=True)])
    assert of(again, ArchiveCheckpoint) == [action] and "ArchiveRetry" in reasons(again)
    assert retried.status.phases["pretrain"].state == "Running"
    failed, _ = step(run, archives=[archived(action, ok=False)])
    assert failed.status.phases["pretrain"].state == "Failed"
    assert "failed verification" in failed.status.phases["pretrain"].message


# ---------------------------------------------------------------------------------------------
# Suspend, spec edits, unimplemented kinds
# ---------------------------------------------------------------------------------------------


def test_suspend_cancels_running_jobs_and_resume_resubmits_them() -> None:
    run, _ = step(make_run())
    suspended = run.model_copy(update={"spec": run.spec.model_copy(update={"suspend": True})})
    suspended, result = step(suspended, {"r-pretrain-a1": running("r-pretrain-a1")})
    assert [c.job_name for c in of(result, CancelJob)] == ["r-pretrain-a1"]
    assert cond(suspended, "Suspended") == ("True", "Suspended")
    assert cond(suspended, "Progressing") == ("False", "Suspended")
    assert suspended.status.stage == "Suspended"
    # While suspended and cancelled, nothing is submitted.
    suspended, idle = step(suspended)
    assert not of(idle, SubmitJob) and not of(idle, CancelJob)
    resumed = suspended.model_copy(update={"spec": suspended.spec.model_copy(update={"suspend": False})})
    resumed, result = step(resumed, now=T0 + dt.timedelta(minutes=5))
    [submit] = of(result, SubmitJob)
    assert submit.job_name == "r-pretrain-a2" and job(resumed, "pretrain").failures == 0
    suspended_cond = condition(resumed.status, "Suspended")
    assert suspended_cond is not None and suspended_cond.status == "False"
    assert suspended_cond.last_transition_time == "2026-01-01T12:05:00Z"


def test_suspended_from_the_start_submits_nothing() -> None:
    run, result = step(make_run(suspend=True))
    assert not of(result, SubmitJob)
    assert run.status.stage == "Suspended"


def test_edit_of_a_started_phase_is_refused_and_running_jobs_are_untouched() -> None:
    run, _ = step(make_run(pretrain(), anneal()))
    edited = make_run(pretrain(maxSteps=99), anneal(maxSteps=50), generation=2)
    edited = edited.model_copy(update={"status": run.status})
    edited, result = step(edited, {"r-pretrain-a1": running("r-pretrain-a1")})
    assert not of(result, CancelJob) and not of(result, SubmitJob)
    assert cond(edited, "Invalid") == ("True", "SpecChangeRefused")
    invalid = condition(edited.status, "Invalid")
    assert invalid is not None and "pretrain" in invalid.message and invalid.observed_generation == 2
    assert job(edited, "pretrain").state == "Running"
    assert edited.status.phases["pretrain"].spec_hash == run.status.phases["pretrain"].spec_hash
    # A retry of the refused phase keeps the config written when it started (write_config False).
    edited, result = step(edited, {"r-pretrain-a1": JobObservation("r-pretrain-a1", "Failed", exit_code=143)})
    [retry] = of(result, SubmitJob)
    assert retry.job_name == "r-pretrain-a2" and not retry.write_config
    # The not-yet-started child may be edited freely: no refusal for it.
    assert "anneal" not in invalid.message
    # Reverting the edit clears the condition.
    reverted = make_run(pretrain(), anneal(maxSteps=50), generation=3).model_copy(
        update={"status": edited.status}
    )
    reverted, _ = step(reverted, {"r-pretrain-a2": running("r-pretrain-a2")})
    assert cond(reverted, "Invalid") == ("False", "Valid")


@pytest.mark.parametrize("kind", ["sft", "dpo", "rlvr"])
def test_unimplemented_kind_blocks_when_reached_and_never_runs(kind: str) -> None:
    post = {"name": kind, "kind": kind, "from": "soup", kind: {"data": {"paths": ["x.jsonl"]}}}
    run, _ = step(make_run(pretrain(), anneal([1, 2]), SOUP, post))
    assert run.status.phases[kind].state == "Pending"  # not reached yet: not blocked
    assert cond(run, "Succeeded") == ("Unknown", "Running")
    for phase in ("pretrain", "anneal", "soup"):
        run = finish_phase(run, phase)
    ps = run.status.phases[kind]
    assert ps.state == "Blocked" and not ps.jobs
    assert f"kind {kind!r}" in ps.message and "does not implement" in ps.message
    assert cond(run, "Succeeded") == ("False", "KindNotImplemented")
    assert cond(run, "Progressing") == ("False", "KindNotImplemented")
    assert run.status.stage == "Blocked" and is_finished(run.status)
    run, again = step(run)
    assert not of(again, SubmitJob)
    assert "KindNotImplemented" not in reasons(again)  # emitted once, on the transition


def test_blocked_branch_reports_while_another_branch_still_runs() -> None:
    run, _ = step(
        make_run(pretrain(), {"name": "sft", "kind": "sft", "from": "pretrain", "sft": SFT["sft"]}, anneal())
    )
    run = finish_phase(run, "pretrain")
    assert run.status.phases["sft"].state == "Blocked"
    assert run.status.phases["anneal"].state == "Pending" and run.status.phases["anneal"].jobs
    assert cond(run, "Succeeded") == ("False", "KindNotImplemented")
    assert cond(run, "Progressing") == ("True", "Running")
    assert not is_finished(run.status)
    assert run.status.stage == "anneal"


# ---------------------------------------------------------------------------------------------
# Conditions and helpers
# ---------------------------------------------------------------------------------------------


def test_last_transition_time_changes_only_when_a_condition_flips() -> None:
    run, _ = step(make_run())
    first = condition(run.status, "Progressing")
    later = T0 + dt.timedelta(hours=1)
    run, _ = step(run, {"r-pretrain-a1": running("r-pretrain-a1")}, now=later)
    same = condition(run.status, "Progressing")
    assert first is not None and same is not None
    assert same.last_transition_time == first.last_transition_time == "2026-01-01T12:00:00Z"
    assert [c.type for c in run.status.conditions] == ["Succeeded", "Progressing", "Invalid", "Suspended"]


def test_invalid_status_for_a_spec_that_does_not_parse() -> None:
    status = invalid_status(make_run().status, "spec.phases[0].kind: bad", T0, 4)
    assert status.stage == "Invalid"
    c = condition(status, "Invalid")
    assert c is not None and (c.status, c.reason, c.observed_generation) == ("True", "InvalidSpec", 4)
    assert not is_finished(status)


def test_job_names_are_deterministic_short_and_hashed_when_long() -> None:
    run = make_run(pretrain(), anneal([42]))
    assert layout.job_name(run, run.phase("anneal"), 42, 3) == "r-anneal-s42-a3"
    long_run = parse_olmorun(
        {**run.model_dump(by_alias=True, exclude={"status"}), "metadata": {"name": "x" * 60}}
    )
    a = layout.job_name(long_run, long_run.phase("anneal"), 42, 12)
    b = layout.job_name(long_run, long_run.phase("anneal"), 43, 12)
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-a12")
    assert a == layout.job_name(long_run, long_run.phase("anneal"), 42, 12)


def test_every_event_is_an_emit_with_a_known_type() -> None:
    run, result = step(make_run(pretrain(), anneal([1, 2]), SOUP))
    assert all(isinstance(e, Emit) and e.type in ("Normal", "Warning") for e in result.events)
    assert isinstance(run.status.phases["pretrain"], PhaseStatus)


def test_a_terminating_job_is_neither_cancelled_again_nor_replaced_until_gone() -> None:
    run, _ = step(make_run())
    terminating = {"r-pretrain-a1": JobObservation("r-pretrain-a1", "Running", terminating=True)}
    suspended = run.model_copy(update={"spec": run.spec.model_copy(update={"suspend": True})})
    suspended, result = step(suspended, terminating)
    assert not of(result, CancelJob)
    resumed = suspended.model_copy(update={"spec": run.spec})
    resumed, result = step(resumed, terminating)
    assert not of(result, SubmitJob)  # two attempts never write to one save_dir at once
    resumed, result = step(resumed)
    assert [s.job_name for s in of(result, SubmitJob)] == ["r-pretrain-a2"]
