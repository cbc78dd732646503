"""Table-driven tests of the pure planner: every transition from (spec, status, observation, now).

Builders keep each case to the lines that matter (JobSet's `testutils.MakeJobSet(...).Obj()` style):
`make_run(...)` builds a validated OlmoRun, `step(run, jobs=..., archives=...)` plans once and returns
the run with its new status, so a case reads as a sequence of observations.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from typing import Any

import pytest

from olmo_operator import layout
from olmo_operator.actions import (
    ArchiveCheckpoint,
    ArchiveResult,
    CancelJob,
    Emit,
    JobObservation,
    MetricsLine,
    Observation,
    SubmitJob,
    WriteRunRecord,
)
from olmo_operator.api import JobStatus, OlmoRun, parse_olmorun
from olmo_operator.plan import (
    Plan,
    condition,
    hashed_phase,
    invalid_status,
    is_finished,
    phase_spec_hash,
    plan,
    run_spec_hash,
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
SFT = {
    "name": "sft",
    "kind": "sft",
    "from": "soup",
    "sft": {"data": {"paths": ["x.jsonl"], "maxLength": 64}},
    "batch": BATCH,
}


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
    """Plan once; the run comes back carrying the new status (as the API server would store it).

    Every case goes through here, so every row also checks purity: plan() leaves its inputs unchanged."""
    observed = Observation(jobs=jobs or {}, archives={a.key: a for a in archives or []})
    before, seen = run.model_dump(mode="json"), copy.deepcopy(observed)
    result = plan(run, observed, now)
    assert run.model_dump(mode="json") == before, "plan() changed the run it was given"
    assert observed == seen, "plan() changed the observation it was given"
    assert result.status is not run.status
    return run.model_copy(update={"status": result.status}), result


def running(name: str, step_: int = 3, loss: float = 2.5) -> JobObservation:
    return JobObservation(name, "Running", metrics=MetricsLine(step=step_, tokens=step_ * 100, loss=loss))


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
    [manifest] = of(result, WriteRunRecord)
    assert manifest.uri == "s3://b/root/ns/r/run.json"
    assert manifest.document["seeds"] == {"pretrain": [6198], "anneal": [6198]}
    assert manifest.document["specHash"] == run_spec_hash(run) and set(
        manifest.document["phaseSpecHashes"]
    ) == {"pretrain", "anneal"}
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
    assert not of(again, WriteRunRecord) and not of(again, SubmitJob)


def test_progress_is_recorded_per_job_phase_and_run() -> None:
    run, _ = step(make_run())
    obs = JobObservation(
        "r-pretrain-a1",
        "Running",
        checkpoint=(2, "s3://b/root/ns/r/phases/pretrain/checkpoints/step2"),
        metrics=MetricsLine(step=4, tokens=4096, loss=3.25, tokens_per_s=100.0),
    )
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
        "Running",
    )
    assert run.status.active_phases == ["pretrain"]


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
    assert (run.status.stage, run.status.active_phases) == ("Running", ["anneal"])
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


def test_sft_and_dpo_run_like_training_phases_from_their_parents_final_checkpoint() -> None:
    dpo = {
        "name": "dpo",
        "kind": "dpo",
        "from": "sft",
        "dpo": {"data": {"paths": ["p.jsonl"], "maxLength": 64}},
        "batch": BATCH,
    }
    run, _ = step(make_run(pretrain(), anneal([1, 2]), SOUP, SFT, dpo))
    for phase in ("pretrain", "anneal", "soup"):
        run = finish_phase(run, phase)
    run, started = step(run)
    [submit] = of(started, SubmitJob)
    soup_final = run.status.phases["soup"].archive
    assert submit.phase == "sft" and submit.train_config.kind == "sft"
    assert submit.train_config.init_from == soup_final and submit.train_config.sft is not None
    # A final evaluation logged by the job reaches the job's and the phase's status.
    name = submit.job_name
    save = layout.save_dir(run, run.phase("sft"), 6198)
    figures = {"eval/arith/accuracy": 0.75}
    finished = JobObservation(
        name,
        "Succeeded",
        exit_code=0,
        checkpoint=(20, f"{save}/checkpoints/step20"),
        metrics=MetricsLine(step=20, eval=figures),
    )
    run, result = step(run, {name: finished})
    run, _ = step(run, {name: finished}, [archived(a) for a in of(result, ArchiveCheckpoint)])
    assert run.status.phases["sft"].state == "Succeeded" and run.status.phases["sft"].eval == figures
    [dpo_submit] = of(step(run)[1], SubmitJob)
    assert dpo_submit.train_config.init_from == run.status.phases["sft"].archive
    assert dpo_submit.train_config.dpo is not None and dpo_submit.train_config.dpo.loss == "dpo_norm"


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


# ---------------------------------------------------------------------------------------------
# Boundaries of the retry timing: doubling below the cap, the cap, sub-second clocks
# ---------------------------------------------------------------------------------------------


def fail_attempts(
    run: OlmoRun, count: int, now: dt.datetime = T0
) -> list[tuple[str | None, str, float | None]]:
    """Fail the current attempt `count` times, submitting each retry when due: (retryAt, message, requeue)."""
    seen = []
    for _ in range(count):
        name = job(run, "pretrain").name
        run, result = step(run, {name: JobObservation(name, "Failed", exit_code=1)}, now=now)
        j = job(run, "pretrain")
        seen.append((j.retry_at, j.message, result.requeue_after))
        assert j.retry_at is not None
        now = parse(j.retry_at)
        run, _ = step(run, now=now)
    return seen


def parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_backoff_doubles_below_the_cap() -> None:
    run, _ = step(make_run(retry={"backoffLimit": 4, "backoffSeconds": 10, "maxBackoffSeconds": 1000}))
    seen = fail_attempts(run, 4)
    assert [requeue for _, _, requeue in seen] == [10.0, 20.0, 40.0, 80.0]
    assert [retry_at for retry_at, _, _ in seen] == [
        "2026-01-01T12:00:10Z",  # T0 + 10
        "2026-01-01T12:00:30Z",  # failed again at its retry time, + 20
        "2026-01-01T12:01:10Z",  # + 40
        "2026-01-01T12:02:30Z",  # + 80
    ]
    assert [message for _, message, _ in seen] == [
        "exit code 1; retry 1/4 in 10s",
        "exit code 1; retry 2/4 in 20s",
        "exit code 1; retry 3/4 in 40s",
        "exit code 1; retry 4/4 in 80s",
    ]


def test_backoff_reaches_the_cap_exactly_and_stays_there() -> None:
    run, _ = step(make_run(retry={"backoffLimit": 4, "backoffSeconds": 10, "maxBackoffSeconds": 40}))
    seen = fail_attempts(run, 4)
    assert [requeue for _, _, requeue in seen] == [10.0, 20.0, 40.0, 40.0]  # 40 = the cap; 80 capped


def test_zero_backoff_retries_at_once() -> None:
    run, _ = step(make_run(retry={"backoffLimit": 1, "backoffSeconds": 0, "maxBackoffSeconds": 0}))
    run, result = step(run, {"r-pretrain-a1": FAILED})
    assert (job(run, "pretrain").retry_at, result.requeue_after) == ("2026-01-01T12:00:00Z", 0.0)
    run, result = step(run)
    assert [s.job_name for s in of(result, SubmitJob)] == ["r-pretrain-a2"]


@pytest.mark.parametrize(
    ("offset_us", "retry_at"),
    [
        (0, "2026-01-01T12:00:10Z"),  # whole second: exactly now + 10 s
        (1, "2026-01-01T12:00:11Z"),  # one microsecond later rounds up, never early
        (300_000, "2026-01-01T12:00:11Z"),
        (999_999, "2026-01-01T12:00:11Z"),
    ],
)
def test_retry_at_rounds_a_sub_second_clock_up(offset_us: int, retry_at: str) -> None:
    now = T0 + dt.timedelta(microseconds=offset_us)
    run, _ = step(make_run(), now=now)
    run, result = step(run, {"r-pretrain-a1": FAILED}, now=now)
    assert job(run, "pretrain").retry_at == retry_at
    assert result.requeue_after == 10.0


def test_a_retry_is_due_at_its_second_and_not_a_microsecond_before() -> None:
    run, _ = step(make_run())
    run, _ = step(run, {"r-pretrain-a1": FAILED})
    due = T0 + dt.timedelta(seconds=10)
    _, early = step(run, now=due - dt.timedelta(microseconds=1))
    assert not of(early, SubmitJob) and early.requeue_after == pytest.approx(1e-6)
    _, on_time = step(run, now=due)
    assert [s.job_name for s in of(on_time, SubmitJob)] == ["r-pretrain-a2"]
    assert on_time.requeue_after is None


def test_the_earliest_of_several_waiting_retries_sets_the_requeue() -> None:
    run, _ = step(
        make_run(
            pretrain(),
            anneal([1, 2]),
            SOUP,
            retry={"backoffLimit": 3, "backoffSeconds": 10, "maxBackoffSeconds": 100},
        )
    )
    run = finish_phase(run, "pretrain")
    fail = {n: JobObservation(n, "Failed", exit_code=1) for n in ("r-anneal-s1-a1", "r-anneal-s2-a1")}
    run, _ = step(run, fail)  # both wait 10 s
    run, _ = step(run, now=T0 + dt.timedelta(seconds=10))  # both resubmitted as a2
    run, result = step(
        run,
        {
            "r-anneal-s1-a2": JobObservation("r-anneal-s1-a2", "Failed", exit_code=1),
            "r-anneal-s2-a2": running("r-anneal-s2-a2"),
        },
        now=T0 + dt.timedelta(seconds=12),
    )
    assert result.requeue_after == 20.0
    _, later = step(run, {"r-anneal-s2-a2": running("r-anneal-s2-a2")}, now=T0 + dt.timedelta(seconds=27))
    assert later.requeue_after == pytest.approx(5.0)  # retry of s1 due at 12 + 20 = 32


@pytest.mark.parametrize(
    ("observed", "message"),
    [
        (JobObservation("r-pretrain-a1", "Failed", exit_code=2), "exit code 2; retry 1/2 in 10s"),
        (JobObservation("r-pretrain-a1", "Failed"), "failed; retry 1/2 in 10s"),
        (
            JobObservation("r-pretrain-a1", "Failed", exit_code=0, message="OOMKilled"),
            "OOMKilled; retry 1/2 in 10s",
        ),
    ],
    ids=["exit-code", "no-exit-code", "scheduler-message"],
)
def test_failure_message_names_the_cause_or_falls_back(observed: JobObservation, message: str) -> None:
    run, _ = step(make_run())
    run, result = step(run, {"r-pretrain-a1": observed})
    assert job(run, "pretrain").message == message
    assert [(e.type, e.reason, e.message) for e in result.events] == [
        ("Warning", "JobFailed", f"job r-pretrain-a1: {message}")
    ]


def test_backoff_limit_counts_failures_not_attempts() -> None:
    run, _ = step(make_run(retry={"backoffLimit": 1}))  # backoffSeconds: the default 30
    run, _ = step(run, {"r-pretrain-a1": FAILED})
    assert job(run, "pretrain").state == "Retrying"  # 1 failure of 1 allowed retry
    assert job(run, "pretrain").retry_at == "2026-01-01T12:00:30Z"
    run, _ = step(run, now=T0 + dt.timedelta(seconds=30))
    run, _ = step(run, {"r-pretrain-a2": JobObservation("r-pretrain-a2", "Failed", exit_code=143)})
    run, _ = step(run, {"r-pretrain-a3": JobObservation("r-pretrain-a3", "Failed", exit_code=1)})
    j = job(run, "pretrain")
    assert (j.state, j.attempts, j.failures, j.message) == (
        "Failed",
        3,
        2,
        "exit code 1; gave up after 2 failure(s) (backoffLimit 1)",
    )


# ---------------------------------------------------------------------------------------------
# The table: every status field and event the planner writes, per situation
# ---------------------------------------------------------------------------------------------

T1 = T0 + dt.timedelta(minutes=1)
PRE = "s3://b/root/ns/r/phases/pretrain/checkpoints"
ARC = "s3://b/root/ns/r/archive"


def _pretrain_done(run: OlmoRun, metrics: MetricsLine | None = None) -> JobObservation:
    return JobObservation(
        "r-pretrain-a1", "Succeeded", exit_code=0, checkpoint=(10, f"{PRE}/step10"), metrics=metrics
    )


def row_start() -> tuple[OlmoRun, Plan]:
    return step(make_run(pretrain(), anneal()))


def row_progress_of_a_fanned_out_phase() -> tuple[OlmoRun, Plan]:
    run = finish_phase(step(make_run(pretrain(), anneal([1, 2]), SOUP))[0], "pretrain")
    s1 = JobObservation(
        "r-anneal-s1-a1", "Running", checkpoint=(2, "c1/step2"), metrics=MetricsLine(3, 300, 2.0)
    )
    s2 = JobObservation("r-anneal-s2-a1", "Pending", metrics=MetricsLine(5, 500, 3.0))
    return step(run, {s1.name: s1, s2.name: s2}, now=T1)


def row_job_succeeded() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run(pretrain(), anneal()))
    return step(run, {"r-pretrain-a1": _pretrain_done(run)}, now=T1)


def row_archived() -> tuple[OlmoRun, Plan]:
    run, result = row_job_succeeded()
    return step(run, archives=[archived(a) for a in of(result, ArchiveCheckpoint)], now=T1)


def row_archive_retry() -> tuple[OlmoRun, Plan]:
    run, result = row_job_succeeded()
    return step(run, archives=[archived(a, ok=False, retryable=True) for a in of(result, ArchiveCheckpoint)])


def row_archive_refused() -> tuple[OlmoRun, Plan]:
    run, result = row_job_succeeded()
    return step(run, archives=[archived(a, ok=False) for a in of(result, ArchiveCheckpoint)], now=T1)


def row_not_archived() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run(pretrain(archive=False)))
    return step(run, {"r-pretrain-a1": _pretrain_done(run)}, now=T1)


def row_no_checkpoint() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run(retry={"backoffLimit": 0}))
    return step(run, {"r-pretrain-a1": JobObservation("r-pretrain-a1", "Succeeded", exit_code=0)}, now=T1)


def row_retrying() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run())
    return step(run, {"r-pretrain-a1": FAILED})


def row_retry_submitted() -> tuple[OlmoRun, Plan]:
    run, _ = row_retrying()
    return step(run, now=T0 + dt.timedelta(seconds=10))


def row_lost() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run())
    return step(run)


def row_preempted() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run())
    return step(run, {"r-pretrain-a1": JobObservation("r-pretrain-a1", "Failed", exit_code=143)})


def row_phase_failed() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run(pretrain(), anneal(), retry={"backoffLimit": 0}))
    return step(run, {"r-pretrain-a1": FAILED}, now=T1)


def row_seed_failed() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run(pretrain(), anneal([1, 2]), SOUP, retry={"backoffLimit": 0}))
    run = finish_phase(run, "pretrain")
    s1 = JobObservation("r-anneal-s1-a1", "Failed", exit_code=1, message="OOM")
    return step(run, {s1.name: s1, "r-anneal-s2-a1": running("r-anneal-s2-a1")}, now=T1)


def row_branch_cancelled() -> tuple[OlmoRun, Plan]:
    """Branches a and b start from pretrain; b fails while a runs: a is cancelled, b named as the cause."""
    a, b = anneal(name="a"), anneal(name="b")
    run, _ = step(make_run(pretrain(), a, b, retry={"backoffLimit": 0}))
    run = finish_phase(run, "pretrain")
    return step(
        run, {"r-a-a1": running("r-a-a1"), "r-b-a1": JobObservation("r-b-a1", "Failed", exit_code=1)}, now=T1
    )


def row_suspended() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run())
    run = run.model_copy(update={"spec": run.spec.model_copy(update={"suspend": True})})
    return step(run, {"r-pretrain-a1": running("r-pretrain-a1")}, now=T1)


def row_suspended_before_start() -> tuple[OlmoRun, Plan]:
    return step(make_run(suspend=True))


def row_edit_refused() -> tuple[OlmoRun, Plan]:
    run, _ = step(make_run())
    edited = make_run(pretrain(maxSteps=99), generation=2).model_copy(update={"status": run.status})
    return step(edited, {"r-pretrain-a1": running("r-pretrain-a1")}, now=T1)


def row_run_succeeded() -> tuple[OlmoRun, Plan]:
    """Both phases report figures; after the run ends the run-level ones are the last phase's."""
    run, _ = step(make_run(pretrain(archive=False), anneal(archive=False)))
    run, _ = step(run, {"r-pretrain-a1": _pretrain_done(run, MetricsLine(10, 1000, 2.0))})
    done_ = JobObservation(
        "r-anneal-a1", "Succeeded", checkpoint=(5, "a/step5"), metrics=MetricsLine(5, 500, 1.5)
    )
    return step(run, {"r-anneal-a1": done_}, now=T1)


def cond_of(run: OlmoRun, type_: str) -> tuple[str, str, str]:
    c = condition(run.status, type_)
    assert c is not None
    return c.status, c.reason, c.message


PRETRAIN_STARTED = ("Normal", "PhaseStarted", "phase 'pretrain' (pretrain) starts 1 job(s)")
GAVE_UP = "exit code 1; gave up after 1 failure(s) (backoffLimit 0)"

# (situation, expected events (type, reason, message), expected status fields: wire path -> value)
TABLE: list[tuple[Any, list[tuple[str, str, str]], dict[str, Any]]] = [
    (
        row_start,
        [PRETRAIN_STARTED],
        {
            "storage": "s3://b/root/ns/r",
            "observedGeneration": 1,
            "stage": "Running",
            "activePhases": ["pretrain"],
            "step": None,
            "tokens": None,
            "lastLoss": None,
            "phases.pretrain.state": "Pending",
            "phases.pretrain.attempts": 1,
            "phases.pretrain.message": "",
            "phases.pretrain.startedAt": "2026-01-01T12:00:00Z",
            "phases.pretrain.finishedAt": None,
            "phases.pretrain.jobs": [
                {
                    "name": "r-pretrain-a1",
                    "seed": 6198,
                    "state": "Pending",
                    "attempts": 1,
                    "failures": 0,
                    "message": "",
                }
            ],
            "phases.anneal.state": "Pending",
            "phases.anneal.jobs": [],
            "phases.anneal.specHash": None,
            "phases.anneal.message": "waiting for phase 'pretrain' (Pending)",
            "phases.anneal.startedAt": None,
            "cond.Succeeded": ("Unknown", "Running", "running: pretrain"),
            "cond.Progressing": ("True", "Running", "running: pretrain"),
            "cond.Invalid": ("False", "Valid", "the spec is valid"),
            "cond.Suspended": ("False", "NotSuspended", ""),
        },
    ),
    (
        row_progress_of_a_fanned_out_phase,
        [],
        {
            "stage": "Running",
            "activePhases": ["anneal"],
            "step": 3,
            "tokens": 800,
            "lastLoss": 2.5,
            "phases.anneal.state": "Running",
            "phases.anneal.attempts": 2,
            "phases.anneal.step": 3,
            "phases.anneal.tokens": 800,
            "phases.anneal.lastLoss": 2.5,
            "phases.anneal.jobs.0.checkpoint": "c1/step2",
            "phases.anneal.jobs.0.state": "Running",
            "phases.anneal.jobs.1.state": "Pending",
            "phases.anneal.jobs.1.checkpoint": None,
            "phases.anneal.jobs.1.step": 5,
            "phases.anneal.jobs.1.tokens": 500,
            "phases.anneal.jobs.1.lastLoss": 3.0,
        },
    ),
    (
        row_job_succeeded,
        [("Normal", "JobSucceeded", "job r-pretrain-a1 succeeded at step 10")],
        {
            "phases.pretrain.state": "Running",
            "phases.pretrain.message": "archiving final checkpoint(s)",
            "phases.pretrain.jobs.0.state": "Succeeded",
            "phases.pretrain.jobs.0.message": "final checkpoint step 10",
            "phases.pretrain.jobs.0.checkpoint": f"{PRE}/step10",
            "phases.pretrain.jobs.0.archive": None,
            "phases.pretrain.finishedAt": None,
            "stage": "Running",
            "activePhases": ["pretrain"],
        },
    ),
    (
        row_archived,
        [
            ("Normal", "Archived", f"{PRE}/step10 archived and verified at {ARC}/pretrain/step10"),
            ("Normal", "PhaseSucceeded", "phase 'pretrain' succeeded"),
            ("Normal", "PhaseStarted", "phase 'anneal' (anneal) starts 1 job(s)"),
        ],
        {
            "phases.pretrain.state": "Succeeded",
            "phases.pretrain.finishedAt": "2026-01-01T12:01:00Z",
            "phases.pretrain.message": "1 job(s) succeeded, final checkpoints archived",
            "phases.pretrain.checkpoint": f"{PRE}/step10",
            "phases.pretrain.archive": f"{ARC}/pretrain/step10",
            "phases.pretrain.jobs.0.archive": f"{ARC}/pretrain/step10",
            "phases.anneal.startedAt": "2026-01-01T12:01:00Z",
            "stage": "Running",
            "activePhases": ["anneal"],
        },
    ),
    (
        row_archive_retry,
        [
            ("Warning", "ArchiveRetry", f"archive of {PRE}/step10 failed, retrying: sha256 mismatch"),
        ],
        {"phases.pretrain.state": "Running", "phases.pretrain.jobs.0.state": "Succeeded"},
    ),
    (
        row_archive_refused,
        [
            (
                "Warning",
                "PhaseFailed",
                (
                    f"phase 'pretrain' failed: job r-pretrain-a1: archive of {PRE}/step10 failed "
                    "verification: sha256 mismatch"
                ),
            )
        ],
        {
            "phases.pretrain.state": "Failed",
            "phases.pretrain.jobs.0.state": "Failed",
            "phases.pretrain.finishedAt": "2026-01-01T12:01:00Z",
            "phases.pretrain.archive": None,
        },
    ),
    (
        row_not_archived,
        [
            ("Normal", "JobSucceeded", "job r-pretrain-a1 succeeded at step 10"),
            ("Normal", "PhaseSucceeded", "phase 'pretrain' succeeded"),
        ],
        {
            "phases.pretrain.state": "Succeeded",
            "phases.pretrain.message": "1 job(s) succeeded",
            "phases.pretrain.checkpoint": f"{PRE}/step10",
            "phases.pretrain.archive": None,
            "cond.Succeeded": ("True", "Succeeded", "all 1 phases succeeded"),
        },
    ),
    (
        row_no_checkpoint,
        [
            (
                "Warning",
                "PhaseFailed",
                (
                    "phase 'pretrain' failed: job r-pretrain-a1: the job exited 0 but left no committed "
                    "checkpoint "
                    "(no MANIFEST.json under checkpoints/)"
                ),
            )
        ],
        {"phases.pretrain.jobs.0.state": "Failed", "phases.pretrain.jobs.0.checkpoint": None},
    ),
    (
        row_retrying,
        [("Warning", "JobFailed", "job r-pretrain-a1: exit code 1; retry 1/2 in 10s")],
        {
            "phases.pretrain.state": "Retrying",
            "stage": "Running",
            "activePhases": ["pretrain"],
            "phases.pretrain.message": "job r-pretrain-a1: exit code 1; retry 1/2 in "
            "10s",  # why the phase waits
            "phases.pretrain.jobs.0.retryAt": "2026-01-01T12:00:10Z",
            "phases.pretrain.jobs.0.failures": 1,
            "phases.pretrain.jobs.0.state": "Retrying",
            "phases.pretrain.attempts": 1,
            "cond.Succeeded": ("Unknown", "Running", "running: pretrain"),
        },
    ),
    (
        row_retry_submitted,
        [("Normal", "Retrying", "job r-pretrain-a2 submitted (attempt 2)")],
        {
            "phases.pretrain.jobs.0.retryAt": None,
            "phases.pretrain.jobs.0.name": "r-pretrain-a2",
            "phases.pretrain.jobs.0.state": "Pending",
            "phases.pretrain.jobs.0.attempts": 2,
            "phases.pretrain.attempts": 2,
            "phases.pretrain.state": "Pending",
            "phases.pretrain.startedAt": "2026-01-01T12:00:00Z",
        },
    ),
    (
        row_lost,
        [
            (
                "Normal",
                "Resubmitted",
                "job r-pretrain-a1 disappeared; resubmitted as r-pretrain-a2 (not a failure)",
            )
        ],
        {"phases.pretrain.jobs.0.failures": 0, "phases.pretrain.jobs.0.attempts": 2},
    ),
    (
        row_preempted,
        [
            (
                "Normal",
                "Resubmitted",
                "job r-pretrain-a1 was preempted; resubmitted as r-pretrain-a2 (not a failure)",
            )
        ],
        {"phases.pretrain.jobs.0.failures": 0, "phases.pretrain.jobs.0.name": "r-pretrain-a2"},
    ),
    (
        row_phase_failed,
        [("Warning", "PhaseFailed", f"phase 'pretrain' failed: job r-pretrain-a1: {GAVE_UP}")],
        {
            "phases.pretrain.state": "Failed",
            "phases.pretrain.startedAt": "2026-01-01T12:00:00Z",
            "phases.pretrain.finishedAt": "2026-01-01T12:01:00Z",
            "phases.pretrain.jobs.0.state": "Failed",
            "phases.pretrain.jobs.0.message": GAVE_UP,
            "phases.pretrain.jobs.0.retryAt": None,
            "stage": "Failed",
            "cond.Succeeded": (
                "False",
                "PhaseFailed",
                f"phase 'pretrain' failed: job r-pretrain-a1: {GAVE_UP}",
            ),
            "cond.Progressing": ("False", "PhaseFailed", "the run stopped: phase 'pretrain' failed"),
        },
    ),
    (
        row_seed_failed,
        [
            (
                "Warning",
                "PhaseFailed",
                "phase 'anneal' failed: job r-anneal-s1-a1: OOM; gave up after 1 failure(s) (backoffLimit 0)",
            ),
            ("Normal", "Cancelled", "job r-anneal-s2-a1 cancelled: run failed"),
        ],
        {
            "phases.anneal.jobs.1.state": "Failed",
            "phases.anneal.jobs.1.message": "cancelled: run failed",
            "phases.anneal.state": "Failed",
            "phases.anneal.finishedAt": "2026-01-01T12:01:00Z",
            "phases.soup.state": "Pending",
            "phases.soup.jobs": [],
        },
    ),
    (
        row_branch_cancelled,
        [
            ("Warning", "PhaseFailed", f"phase 'b' failed: job r-b-a1: {GAVE_UP}"),
            ("Normal", "Cancelled", "job r-a-a1 cancelled: run failed"),
        ],
        {
            "phases.a.state": "Failed",
            "phases.a.message": "cancelled: another phase failed",
            "phases.a.finishedAt": "2026-01-01T12:01:00Z",
            "phases.a.jobs.0.state": "Failed",
            "phases.a.jobs.0.message": "cancelled: run failed",
            "cond.Succeeded": ("False", "PhaseFailed", f"phase 'b' failed: job r-b-a1: {GAVE_UP}"),
            "cond.Progressing": ("False", "PhaseFailed", "the run stopped: phase 'b' failed"),
        },
    ),
    (
        row_suspended,
        [("Normal", "Cancelled", "job r-pretrain-a1 cancelled: suspended")],
        {
            "phases.pretrain.state": "Pending",
            "phases.pretrain.finishedAt": None,
            "phases.pretrain.message": "suspended: jobs cancelled; they resume from their newest checkpoint "
            "when resumed",
            "phases.pretrain.jobs.0.state": "Pending",
            "phases.pretrain.jobs.0.message": "cancelled: suspended",
            "stage": "Suspended",
            "cond.Suspended": ("True", "Suspended", "spec.suspend is true: no job runs"),
            "cond.Succeeded": ("Unknown", "Suspended", "the run is suspended"),
            "cond.Progressing": ("False", "Suspended", "spec.suspend is true"),
        },
    ),
    (
        row_suspended_before_start,
        [],
        {
            "phases.pretrain.message": "suspended before it started",
            "phases.pretrain.jobs": [],
            "phases.pretrain.specHash": None,
            "phases.pretrain.startedAt": None,
            "stage": "Suspended",
        },
    ),
    (
        row_edit_refused,
        [],
        {
            "observedGeneration": 2,
            "phases.pretrain.state": "Running",
            "phases.pretrain.message": "spec edit refused; running with the spec it started with",
            "cond.Invalid": (
                "True",
                "SpecChangeRefused",
                (
                    "phase(s) pretrain already started; their spec, the model, image and seed cannot "
                    "change. Revert the "
                    "edit (running jobs continue with the spec they started with) or create a new OlmoRun."
                ),
            ),
        },
    ),
    (
        row_run_succeeded,
        [
            ("Normal", "JobSucceeded", "job r-anneal-a1 succeeded at step 5"),
            ("Normal", "PhaseSucceeded", "phase 'anneal' succeeded"),
        ],
        {
            "stage": "Succeeded",
            "step": 5,
            "tokens": 500,
            "lastLoss": 1.5,
            "phases.pretrain.step": 10,
            "phases.pretrain.tokens": 1000,
            "phases.pretrain.lastLoss": 2.0,
            "phases.anneal.checkpoint": "a/step5",
            "phases.anneal.finishedAt": "2026-01-01T12:01:00Z",
            "cond.Succeeded": ("True", "Succeeded", "all 2 phases succeeded"),
            "cond.Progressing": ("False", "Succeeded", "the run is complete"),
        },
    ),
]


def field_of(run: OlmoRun, path: str) -> Any:
    """A status field by wire path (`phases.p.jobs.0.state`); `cond.T` is (status, reason, message)."""
    if path.startswith("cond."):
        return cond_of(run, path.removeprefix("cond."))
    node: Any = run.status.model_dump(mode="json", by_alias=True)
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _subset(actual: Any, expected: Any) -> Any:
    """For list-of-dict fields only the keys a row names are compared."""
    if isinstance(expected, list) and all(isinstance(e, dict) for e in expected) and isinstance(actual, list):
        return [{k: a.get(k) for k in e} for a, e in zip(actual, expected, strict=False)] + actual[
            len(expected) :
        ]
    return actual


@pytest.mark.parametrize(("situation", "events", "fields"), TABLE, ids=[row[0].__name__[4:] for row in TABLE])
def test_status_fields_and_events(
    situation: Any, events: list[tuple[str, str, str]], fields: dict[str, Any]
) -> None:
    run, result = situation()
    assert [(e.type, e.reason, e.message) for e in result.events] == events
    for path, expected in fields.items():
        assert _subset(field_of(run, path), expected) == expected, path


# ---------------------------------------------------------------------------------------------
# Pinned formats: an upgrade that changes them would refuse every started phase / break readers
# ---------------------------------------------------------------------------------------------


def test_spec_hash_recipe_is_pinned() -> None:
    """The hash stored in status.phases[*].specHash. If this changes, every phase started before an
    upgrade is refused as edited (SpecChangeRefused) after it: a new field with a default changes the
    dump too. Change it only together with a migration of stored hashes."""
    run = make_run()
    phase = run.phase("pretrain")
    recipe = {
        # the wire form: archiveFinal under its pre-rename key; `eval`, added after release, left out while
        # unset
        "phase": hashed_phase(phase),
        "model": run.spec.model.model_dump(mode="json", by_alias=True),
        "image": "img@sha256:abc",
        "seed": 6198,
    }
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str).encode()
    assert phase_spec_hash(run, phase) == hashlib.sha256(blob).hexdigest()[:16]
    assert phase_spec_hash(run, phase) == PINNED_SPEC_HASH
    # What it covers: the phase, the model, the image and the run seed; not the rest of the spec.
    for change in ({"image": "img@sha256:def"}, {"seed": 7}, {"model": {"preset": "olmo2-1b"}}):
        assert phase_spec_hash(make_run(**change), phase) != PINNED_SPEC_HASH, change
    assert (
        phase_spec_hash(make_run(pretrain(maxSteps=11)), make_run(pretrain(maxSteps=11)).phase("pretrain"))
        != PINNED_SPEC_HASH
    )
    for free in (
        {"suspend": True},
        {"retry": {"backoffLimit": 9}},
        {"cluster": {"gpusPerNode": 0, "queue": "q"}},
    ):
        assert phase_spec_hash(make_run(**free), phase) == PINNED_SPEC_HASH, free


PINNED_SPEC_HASH = "0ac74088648b0c0e"


def test_run_record_keys_are_pinned() -> None:
    run, result = step(make_run(pretrain(), anneal([42, 7]), SOUP))
    [record] = of(result, WriteRunRecord)
    assert sorted(record.document) == [
        "apiVersion",
        "createdAt",
        "image",
        "kind",
        "metadata",
        "phaseSpecHashes",
        "seeds",
        "spec",
        "specHash",
    ]
    assert record.document["metadata"] == {"name": "r", "namespace": "ns", "uid": "u-1"}
    assert (record.document["apiVersion"], record.document["kind"]) == ("olmorun.dev/v1alpha1", "OlmoRun")
    assert (record.document["image"], record.document["createdAt"]) == (
        "img@sha256:abc",
        "2026-01-01T12:00:00Z",
    )
    assert record.document["seeds"] == {"pretrain": [6198], "anneal": [42, 7], "soup": [6198]}
    assert record.document["spec"] == run.spec.model_dump(mode="json", by_alias=True)


def test_timestamps_are_utc_whole_seconds_with_a_z() -> None:
    from olmo_operator.plan import parse_timestamp, timestamp

    local = dt.datetime(2026, 1, 1, 14, 0, 0, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert timestamp(local) == "2026-01-01T12:00:00Z"
    assert parse_timestamp("2026-01-01T12:00:00Z") == T0


def test_run_spec_hash_ignores_where_the_run_is_written() -> None:
    run = make_run(pretrain(), anneal())
    moved = run.model_copy(
        update={
            "spec": run.spec.model_copy(
                update={"storage": run.spec.storage.model_copy(update={"uri": "file:///elsewhere"})}
            )
        }
    )
    reseeded = run.model_copy(update={"spec": run.spec.model_copy(update={"seed": 1})})
    assert run_spec_hash(moved) == run_spec_hash(run) != run_spec_hash(reseeded)


@pytest.mark.parametrize("reason", ["Diverged", "InvalidConfig", "NoIntactCheckpoint"])
def test_a_failure_the_job_recorded_as_permanent_is_not_retried(reason: str) -> None:
    """olmo_trainer.failure: the job said why retrying cannot help; the run fails at once with it."""
    run, _ = step(make_run())
    observed = JobObservation(
        "r-pretrain-a1",
        "Failed",
        exit_code=1,
        message="loss nan at step 2",
        failure_reason=reason,
        metrics=MetricsLine(step=2, tokens=200, loss=None),
    )
    run, result = step(run, {"r-pretrain-a1": observed})
    j = job(run, "pretrain")
    assert (j.state, j.attempts, j.retry_at) == ("Failed", 1, None)
    assert j.message == f"{reason}: loss nan at step 2; not retried"
    assert not of(result, SubmitJob)
    assert reason in reasons(result) and "JobFailed" not in reasons(result)
    assert run.status.phases["pretrain"].state == "Failed"
    assert cond(run, "Succeeded")[0] == "False"
    assert f"{reason}: loss nan at step 2" in message(run, "Succeeded")


def test_the_status_shows_the_latest_loss_not_an_older_finite_one() -> None:
    """A step whose loss is not finite has none in metrics.jsonl (null): the status must not keep
    showing an earlier step's loss as if it were current."""
    run, _ = step(make_run())
    run, _ = step(run, {"r-pretrain-a1": running("r-pretrain-a1", 1, loss=5.9)})
    assert job(run, "pretrain").last_loss == 5.9 and run.status.last_loss == 5.9
    diverged = JobObservation("r-pretrain-a1", "Running", metrics=MetricsLine(step=2, tokens=200, loss=None))
    run, _ = step(run, {"r-pretrain-a1": diverged})
    assert job(run, "pretrain").step == 2
    assert job(run, "pretrain").last_loss is None and run.status.last_loss is None


def test_a_notice_of_a_running_job_is_its_message_and_one_warning_event() -> None:
    """olmo_trainer.layout.NOTICE_NAME: e.g. the job skipped a damaged checkpoint and carries on."""
    run, _ = step(make_run())
    notice = (
        "CheckpointDamaged",
        "skipped damaged checkpoint(s) s3://b/step6 (__0_0.distcp); resumed from s3://b/step4",
    )
    observed = JobObservation(
        "r-pretrain-a1",
        "Running",
        message="running",
        notice=notice,
        metrics=MetricsLine(step=5, tokens=500, loss=2.0),
    )
    run, result = step(run, {"r-pretrain-a1": observed})
    assert job(run, "pretrain").message == notice[1]
    assert [e for e in result.events if e.reason == "CheckpointDamaged"] == [
        Emit("Warning", "CheckpointDamaged", f"job r-pretrain-a1: {notice[1]}")
    ]
    run, result = step(run, {"r-pretrain-a1": observed})
    assert "CheckpointDamaged" not in reasons(result) and job(run, "pretrain").state == "Running"


def test_the_archive_rename_keeps_the_spec_hash_of_phases_started_before_it() -> None:
    """A phase started by an operator that knew only `archive` must not read as edited afterwards."""
    old, new = make_run(pretrain(archive=False)), make_run(pretrain(archiveFinal=False))
    assert phase_spec_hash(old, old.phase("pretrain")) == phase_spec_hash(new, new.phase("pretrain"))
    assert hashed_phase(new.phase("pretrain"))["archive"] is False and "archiveFinal" not in hashed_phase(
        new.phase("pretrain")
    )
    assert run_spec_hash(old) == run_spec_hash(new) != run_spec_hash(make_run(pretrain()))
