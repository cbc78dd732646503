"""The planner: PURE and total. (run, observation, now) -> the actions to take and the whole new status.

Its inputs and outputs (Observation, SubmitJob, ...) are defined in actions.py; this module decides.

    result = plan(run, Observation(jobs={...}, archives={...}), now)
    for action in result.actions: ...              # effects.apply does the I/O
    patch_status(result.status)                     # decided in memory, written once

No kopf, Kubernetes, torchx or fsspec here: the kopf handlers and the local runner both call this through
reconcile.py, and the table-driven tests in tests/operator/test_plan.py call it directly.

Behaviour, per phase in topological order:
- A phase starts when its parent succeeded (its final checkpoint archived and verified). It submits one
  job per seed (a soup: one job averaging the parent's per-seed checkpoints). Its spec hash is stored.
- sft, dpo and rlvr phases run like any training phase (from their parent's final checkpoint).
- A job's final evaluation (`eval/<task>/<metric>` in its metrics) is copied into its status and, for a
  phase of one job, into `status.phases.<p>.eval`.
- A failed job is retried after `backoffSeconds * 2**(failures-1)` (capped) up to `backoffLimit`
  failures. A running job whose metrics gain no step for `hangTimeoutMinutes` is hung: cancelled, and
  failed like a crash (reason Hung); its retry waits until the cancelled attempt is gone. A preempted job
  (exit 143) or a job that disappeared is resubmitted at once and does not
  count as a failure. Every attempt shares the save_dir, so it resumes from the newest checkpoint.
- A job that succeeded has its final checkpoint archived (copy + verify); the phase succeeds when all
  of its jobs are archived (or `archiveFinal: false`).
- `suspend: true` cancels active jobs; clearing it resubmits them (they resume from checkpoints).
- An edit to a phase that already started is refused (condition Invalid, reason SpecChangeRefused);
  its running jobs are untouched and its retries keep the config written when it started.
- A failed phase fails the run and cancels the jobs still running.
- Storage that cannot be reached or refuses the credentials (Observation.storage_problem) changes
  nothing: condition StorageUnavailable=True says why, the run is looked at again in 30 s, and no job
  is failed for a checkpoint that could not be read. When it answers, the condition turns False.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from olmo_operator import layout
from olmo_operator.actions import (
    Action,
    ArchiveCheckpoint,
    CancelJob,
    Emit,
    JobObservation,
    Observation,
    StorageProblem,
    SubmitJob,
    WriteRunRecord,
)
from olmo_operator.api import (
    Condition,
    JobStatus,
    OlmoRun,
    OlmoRunStatus,
    PhaseSpec,
    PhaseStatus,
    topological_order,
)
from olmo_operator.request import job_request
from olmo_operator.resolve import resolve_config
from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.layout import EXIT_PREEMPTED


@dataclass
class Plan:
    status: OlmoRunStatus
    """The complete new status; persist it once."""
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None
    """Seconds until a timed decision (a retry backoff) falls due; None when nothing is waiting."""

    @property
    def events(self) -> list[Emit]:
        return [a for a in self.actions if isinstance(a, Emit)]

    @property
    def finished(self) -> bool:
        """Nothing more will happen without a spec change: succeeded or failed."""
        return is_finished(self.status)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

ACTIVE_JOB_STATES = ("Pending", "Running", "Retrying")
CANCELLED_BY_FAILURE = "cancelled: another phase failed"
CONDITION_TYPES = ("Succeeded", "Progressing", "Invalid", "Suspended", "StorageUnavailable")
STORAGE_CONDITION = "StorageUnavailable"
STORAGE_RETRY_SECONDS = 30.0
"""How soon a run waiting for its storage (StorageUnavailable) is looked at again."""


def timestamp(now: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes it."""
    return now.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_timestamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_spec_hash(run: OlmoRun) -> str:
    """What a run trains: its whole spec but `storage` (where it is written). Recorded in run.json;
    `olmorun diff` compares it. Each phase as phase_spec_hash sees it (hashed_phase), so a spec that
    says `archive: false` (the deprecated name) and one that says `archiveFinal: false` are the same."""
    spec = run.spec.model_dump(mode="json", by_alias=True, exclude={"storage"})
    spec["phases"] = [hashed_phase(p) for p in run.spec.phases]
    return hash_json(spec)


def phase_spec_hash(run: OlmoRun, phase: PhaseSpec) -> str:
    """What a started phase may not change: its own spec, the model, the image and the run seed.

    The phase is hashed as it was dumped before archiveFinal replaced `archive` (its value under the
    old key, no archiveFinal), and a field added to PhaseSpec after release (`eval`) is left out while
    unset: a phase started before either change is not refused as edited (no SpecChangeRefused after
    an upgrade).
    """
    return hash_json(
        {
            "phase": hashed_phase(phase),
            "model": run.spec.model.model_dump(mode="json", by_alias=True),
            "image": run.spec.image,
            "seed": run.spec.seed,
        }
    )


def hashed_phase(phase: PhaseSpec) -> dict[str, object]:
    """The phase's wire form for phase_spec_hash: archiveFinal under its pre-rename key `archive`, and
    the fields added after release (`eval`) only when set."""
    added_later = {name for name in ("eval",) if getattr(phase, name) is None}
    dumped = phase.model_dump(mode="json", by_alias=True, exclude=added_later)
    dumped["archive"] = dumped.pop("archiveFinal")
    return dumped


def condition(status: OlmoRunStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def set_condition(
    status: OlmoRunStatus,
    type_: str,
    value: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> None:
    """Upsert a condition; lastTransitionTime changes only when its status flips."""
    old = condition(status, type_)
    changed = old is None or old.status != value
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=timestamp(now) if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )
    others = [c for c in status.conditions if c.type != type_]
    status.conditions = sorted([*others, new], key=_condition_order)


def _condition_order(c: Condition) -> tuple[int, str]:
    order = CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else len(CONDITION_TYPES)
    return order, c.type


def is_finished(status: OlmoRunStatus) -> bool:
    """Succeeded or failed: nothing more happens without a spec change."""
    succeeded = condition(status, "Succeeded")
    progressing = condition(status, "Progressing")
    if succeeded is None or succeeded.status == "Unknown":
        return False
    return progressing is None or progressing.status == "False"


INVALID_REASON = "InvalidSpec"
"""Condition reason and event reason of a spec that does not parse."""


def invalid_status(
    status: OlmoRunStatus, message: str, now: dt.datetime, generation: int | None
) -> OlmoRunStatus:
    """The status of a run whose spec does not parse (SpecError): nothing is planned or touched."""
    new = status.model_copy(deep=True)
    new.stage, new.active_phases = "Invalid", []
    new.observed_generation = generation
    set_condition(new, "Invalid", "True", INVALID_REASON, message, now, generation)
    set_condition(
        new,
        "Progressing",
        "False",
        "InvalidSpec",
        "fix the spec; nothing runs until it is valid",
        now,
        generation,
    )
    if condition(new, "Succeeded") is None:
        set_condition(new, "Succeeded", "Unknown", "InvalidSpec", message, now, generation)
    return new


def _backoff(run: OlmoRun, failures: int) -> int:
    retry = run.spec.retry
    return int(min(retry.backoff_seconds * 2 ** max(failures - 1, 0), retry.max_backoff_seconds))


# ---------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------


class _Planner:
    """One planning pass; accumulates actions and mutates a private copy of the status."""

    def __init__(self, run: OlmoRun, observed: Observation, now: dt.datetime):
        self.run = run
        self.observed = observed
        self.now = now
        self.ts = timestamp(now)
        self.status = run.status.model_copy(deep=True)
        self.actions: list[Action] = []
        self.requeue: list[float] = []
        self.refused: list[str] = []
        self.generation = run.metadata.generation

    # -- small utilities ------------------------------------------------------------------------
    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(Emit(type_, reason, message))

    def phase_status(self, phase: PhaseSpec) -> PhaseStatus:
        return self.status.phases.setdefault(phase.name, PhaseStatus())

    def run_failed(self) -> bool:
        return any(
            self.status.phases.get(p.name, PhaseStatus()).state == "Failed" for p in self.run.spec.phases
        )

    # -- entry ----------------------------------------------------------------------------------
    def plan(self) -> Plan:
        if self.observed.storage_problem is not None:
            return self._wait_for_storage(self.observed.storage_problem)
        self._storage_answers()
        if self.status.storage is None:
            self.status.storage = layout.run_root(self.run)
            self.actions.append(WriteRunRecord(layout.run_record_uri(self.run), self._run_document()))
        order = topological_order(self.run)
        for phase in order:
            self._check_spec_hash(phase)
        for phase in order:
            if self.run_failed():
                break
            self._plan_phase(phase)
        if self.run_failed() or self.run.spec.suspend:
            self._cancel_active("run failed" if self.run_failed() else "suspended")
        self._summarize(order)
        return Plan(self.status, self.actions, min(self.requeue) if self.requeue else None)

    def _wait_for_storage(self, problem: StorageProblem) -> Plan:
        """Nothing is known about the jobs' files: change nothing, say why, look again soon. A job that
        ended meanwhile is judged once its checkpoints can be read (never failed for want of them)."""
        was = condition(self.status, STORAGE_CONDITION)
        if was is None or was.status != "True" or was.reason != problem.reason:
            self.emit("Warning", STORAGE_CONDITION, problem.message)
        set_condition(
            self.status, STORAGE_CONDITION, "True", problem.reason, problem.message, self.now, self.generation
        )
        return Plan(self.status, self.actions, STORAGE_RETRY_SECONDS)

    def _storage_answers(self) -> None:
        """A run that waited for its storage says it continues (the condition stays, False)."""
        was = condition(self.status, STORAGE_CONDITION)
        if was is None or was.status != "True":
            return
        message = f"storage {layout.run_root(self.run)} answers again; the run continues"
        set_condition(
            self.status, STORAGE_CONDITION, "False", "Available", message, self.now, self.generation
        )
        self.emit("Normal", "StorageAvailable", message)

    def _run_document(self) -> dict[str, object]:
        return {
            "apiVersion": self.run.api_version,
            "kind": self.run.kind,
            "metadata": {
                "name": self.run.name,
                "namespace": self.run.namespace,
                "uid": self.run.metadata.uid,
            },
            "spec": self.run.spec.model_dump(mode="json", by_alias=True),
            "image": self.run.spec.image,
            "seeds": {p.name: layout.job_seeds(self.run, p) for p in self.run.spec.phases},
            "specHash": run_spec_hash(self.run),
            "phaseSpecHashes": {p.name: phase_spec_hash(self.run, p) for p in self.run.spec.phases},
            "createdAt": self.ts,
        }

    def _check_spec_hash(self, phase: PhaseSpec) -> None:
        ps = self.status.phases.get(phase.name)
        if ps is None or ps.spec_hash is None:
            return
        if ps.spec_hash != phase_spec_hash(self.run, phase):
            self.refused.append(phase.name)

    # -- phases ---------------------------------------------------------------------------------
    def _plan_phase(self, phase: PhaseSpec) -> None:
        ps = self.phase_status(phase)
        if ps.state in ("Succeeded", "Failed"):
            return
        if phase.from_ is not None:
            parent = self.phase_status(self.run.phase(phase.from_))
            if parent.state != "Succeeded":
                ps.state = "Pending"
                ps.message = f"waiting for phase {phase.from_!r} ({parent.state})"
                return
        if self.run.spec.suspend:
            if ps.spec_hash is None:
                ps.message = "suspended before it started"
            return
        if ps.spec_hash is None:
            ps.spec_hash = phase_spec_hash(self.run, phase)
            ps.started_at = self.ts
            ps.jobs = [
                JobStatus(name=layout.job_name(self.run, phase, seed, 1), seed=seed)
                for seed in layout.job_seeds(self.run, phase)
            ]
            self.emit(
                "Normal", "PhaseStarted", f"phase {phase.name!r} ({phase.kind}) starts {len(ps.jobs)} job(s)"
            )
        for job in ps.jobs:
            self._plan_job(phase, ps, job)
        self._aggregate(phase, ps)

    def _aggregate(self, phase: PhaseSpec, ps: PhaseStatus) -> None:
        jobs = ps.jobs
        ps.attempts = sum(j.attempts for j in jobs)
        steps = [j.step for j in jobs if j.step is not None]
        tokens = [j.tokens for j in jobs if j.tokens is not None]
        losses = [j.last_loss for j in jobs if j.last_loss is not None]
        ps.step = min(steps) if steps else ps.step
        ps.tokens = sum(tokens) if tokens else ps.tokens
        ps.last_loss = sum(losses) / len(losses) if losses else None  # the latest, never a stale one
        failed = [j for j in jobs if j.state == "Failed"]
        if failed:
            ps.state = "Failed"
            ps.finished_at = self.ts
            ps.message = f"phase {phase.name!r} failed: job {failed[0].name}: {failed[0].message}"
            self.emit("Warning", "PhaseFailed", ps.message)
            return
        done = all(j.state == "Succeeded" and (j.archive or not phase.archive_final) for j in jobs)
        if done:
            ps.state = "Succeeded"
            ps.finished_at = self.ts
            if not layout.fans_out(phase):
                ps.checkpoint = jobs[0].checkpoint
                ps.archive = jobs[0].archive
                ps.eval = dict(jobs[0].eval)
            ps.message = f"{len(jobs)} job(s) succeeded" + (
                ", final checkpoints archived" if phase.archive_final else ""
            )
            self.emit("Normal", "PhaseSucceeded", f"phase {phase.name!r} succeeded")
            return
        states = {j.state for j in jobs}
        ps.state = "Running" if "Running" in states else "Retrying" if "Retrying" in states else "Pending"
        if all(j.state == "Succeeded" for j in jobs):
            ps.state = "Running"
            ps.message = "archiving final checkpoint(s)"
        elif phase.name in self.refused:
            ps.message = "spec edit refused; running with the spec it started with"
        elif ps.state == "Retrying":  # why it waits: the failure (Hung, an exit code) and when it retries
            retrying = next(j for j in jobs if j.state == "Retrying")
            ps.message = f"job {retrying.name}: {retrying.message}"
        else:
            ps.message = ""

    # -- jobs -----------------------------------------------------------------------------------
    def _submit(self, phase: PhaseSpec, ps: PhaseStatus, job: JobStatus, attempt: int) -> None:
        name = layout.job_name(self.run, phase, job.seed, attempt)
        config = self._train_config(phase, job.seed)
        job.name = name
        job.attempts = attempt
        job.state = "Pending"
        job.retry_at = None
        job.progress_at = None  # a new attempt's hang clock starts when it runs
        uri = layout.config_uri(self.run, phase, job.seed)
        request = job_request(self.run, phase, job.seed, attempt, uri)
        self.actions.append(
            SubmitJob(phase.name, job.seed, attempt, config, request, write_config=attempt == 1)
        )

    def _train_config(self, phase: PhaseSpec, seed: int) -> TrainConfig:
        if phase.from_ is None:
            return resolve_config(self.run, phase, seed)
        parent = self.run.phase(phase.from_)
        finals = _final_checkpoints(parent, self.phase_status(parent))
        if phase.kind == "soup":
            return resolve_config(self.run, phase, seed, soup_from=finals)
        # A non-soup child of a fanned-out phase continues from its first seed's checkpoint.
        return resolve_config(self.run, phase, seed, init_from=finals[0] if finals else None)

    def _plan_job(self, phase: PhaseSpec, ps: PhaseStatus, job: JobStatus) -> None:
        if job.state == "Succeeded":
            self._plan_archive(phase, job)
            return
        if job.state == "Failed":
            return
        if job.attempts == 0:
            self._submit(phase, ps, job, 1)
            return
        if job.state == "Retrying":
            due = parse_timestamp(job.retry_at) if job.retry_at else self.now
            old = self.observed.jobs.get(job.name)
            if due <= self.now and old is not None and old.state in ("Pending", "Running"):
                # The attempt was cancelled (hung) and still stops: two attempts never share a save_dir.
                if not old.terminating:
                    self.actions.append(CancelJob(job.name, "hung"))
                return
            if due <= self.now:
                self._submit(phase, ps, job, job.attempts + 1)
                self.emit("Normal", "Retrying", f"job {job.name} submitted (attempt {job.attempts})")
            else:
                self.requeue.append((due - self.now).total_seconds())
            return
        obs = self.observed.jobs.get(job.name, JobObservation(job.name, "Missing"))
        before = job.step
        self._record_progress(job, obs)
        if obs.state in ("Pending", "Running") and self._hung(job, obs, before):
            return
        if obs.state in ("Pending", "Running"):
            job.state = obs.state
            if obs.notice is not None:
                reason, notice = obs.notice
                if job.message != notice:  # the status remembers it: one event per notice
                    self.emit("Warning", reason, f"job {job.name}: {notice}")
                job.message = notice
            else:
                job.message = obs.message
        elif obs.state == "Succeeded":
            self._job_succeeded(phase, job, obs)
        elif obs.state == "Missing" or obs.preempted or obs.exit_code == EXIT_PREEMPTED:
            # Lost or preempted: not the job's fault; resubmit now, resuming from the newest checkpoint.
            was = job.name
            why = "disappeared" if obs.state == "Missing" else "was preempted"
            self._submit(phase, ps, job, job.attempts + 1)
            self.emit("Normal", "Resubmitted", f"job {was} {why}; resubmitted as {job.name} (not a failure)")
        else:
            self._job_failed(job, obs)

    def _record_progress(self, job: JobStatus, obs: JobObservation) -> None:
        if obs.checkpoint is not None:
            job.checkpoint = obs.checkpoint[1]
        if obs.metrics is not None:
            job.step = obs.metrics.step
            job.tokens = obs.metrics.tokens if obs.metrics.tokens is not None else job.tokens
            # The latest step's loss, even when it is absent (non-finite): never an older step's.
            job.last_loss = obs.metrics.loss
            job.eval = dict(obs.metrics.eval) or job.eval

    def _hung(self, job: JobStatus, obs: JobObservation, before: int | None) -> bool:
        """Run the hang clock of an active attempt (spec.retry.hangTimeoutMinutes); True when it has
        just been declared hung: cancelled, and failed like a crash (it uses the retry budget).

        The clock (job.progress_at) starts when the attempt is first seen running and restarts at each new
        step in its metrics; it stops while the job is queued (Pending) or its pods are stopping.
        """
        timeout = self.run.spec.retry.hang_timeout_minutes
        if timeout is None or obs.state != "Running" or obs.terminating:
            job.progress_at = None
            return False
        advanced = obs.metrics is not None and obs.metrics.step != before
        if job.progress_at is None or advanced:
            job.progress_at = self.ts
        limit = dt.timedelta(minutes=timeout)
        stalled = self.now - parse_timestamp(job.progress_at)
        if stalled < limit:
            self.requeue.append((limit - stalled).total_seconds())
            return False
        last = f"step {job.step}" if job.step is not None else "no step yet"
        message = f"Hung: no new step in metrics.jsonl for {timeout:g} min ({last}); cancelled"
        self.actions.append(CancelJob(job.name, "hung"))
        job.progress_at = None
        self._job_failed(job, JobObservation(job.name, "Failed", message=message), reason="Hung")
        return True

    def _job_succeeded(self, phase: PhaseSpec, job: JobStatus, obs: JobObservation) -> None:
        if obs.checkpoint is None:
            job.state = "Failed"
            job.message = (
                "the job exited 0 but left no committed checkpoint (no MANIFEST.json under checkpoints/)"
            )
            return
        job.state = "Succeeded"
        job.checkpoint = obs.checkpoint[1]
        job.message = f"final checkpoint step {obs.checkpoint[0]}"
        self.emit("Normal", "JobSucceeded", f"job {job.name} succeeded at step {obs.checkpoint[0]}")
        self._plan_archive(phase, job)

    def _job_failed(self, job: JobStatus, obs: JobObservation, *, reason: str = "JobFailed") -> None:
        job.failures += 1
        if obs.failure_reason:  # the job said why, and that retrying cannot help
            job.state = "Failed"
            job.message = f"{obs.failure_reason}: {obs.message}; not retried"
            self.emit("Warning", obs.failure_reason, f"job {job.name}: {obs.message}")
            return
        cause = obs.message or (f"exit code {obs.exit_code}" if obs.exit_code is not None else "failed")
        limit = self.run.spec.retry.backoff_limit
        if job.failures > limit:
            job.state = "Failed"
            job.message = f"{cause}; gave up after {job.failures} failure(s) (backoffLimit {limit})"
            return
        delay = _backoff(self.run, job.failures)
        job.state = "Retrying"
        # Round up to the next whole second (timestamps have no fraction): a retry is never early.
        job.retry_at = timestamp(self.now + dt.timedelta(seconds=delay) + dt.timedelta(microseconds=999_999))
        job.message = f"{cause}; retry {job.failures}/{limit} in {delay}s"
        self.requeue.append(float(delay))
        self.emit("Warning", reason, f"job {job.name}: {job.message}")

    def _plan_archive(self, phase: PhaseSpec, job: JobStatus) -> None:
        if not phase.archive_final or job.archive or job.checkpoint is None:
            return
        key = layout.job_key(phase, job.seed)
        step = layout.step_of(job.checkpoint)
        dst = layout.archive_uri(self.run, phase, job.seed, step if step is not None else 0)
        result = self.observed.archives.get(key)
        if result is not None and result.dst == dst and result.ok:
            job.archive = dst
            self.emit("Normal", "Archived", f"{job.checkpoint} archived and verified at {dst}")
            return
        if result is not None and result.dst == dst and not result.retryable:
            job.state = "Failed"
            job.message = f"archive of {job.checkpoint} failed verification: {result.message}"
            return
        if result is not None and result.dst == dst:
            self.emit(
                "Warning", "ArchiveRetry", f"archive of {job.checkpoint} failed, retrying: {result.message}"
            )
        self.actions.append(ArchiveCheckpoint(phase.name, job.seed, key, job.checkpoint, dst))

    def _cancel_active(self, why: str) -> None:
        for phase in self.run.spec.phases:
            ps = self.status.phases.get(phase.name)
            if ps is None:
                continue
            for job in ps.jobs:
                if job.state not in ("Pending", "Running") or job.attempts == 0:
                    continue
                obs = self.observed.jobs.get(job.name)
                if obs is not None and obs.state in ("Pending", "Running") and not obs.terminating:
                    self.actions.append(CancelJob(job.name, why))
                    self.emit("Normal", "Cancelled", f"job {job.name} cancelled: {why}")
                job.message = f"cancelled: {why}"
                if why == "run failed":
                    job.state = "Failed"
            if ps.state not in ACTIVE_JOB_STATES or not ps.jobs:
                continue
            if why == "suspended":
                ps.message = (
                    "suspended: jobs cancelled; they resume from their newest checkpoint when resumed"
                )
            else:
                ps.state = "Failed"
                ps.finished_at = self.ts
                ps.message = CANCELLED_BY_FAILURE

    # -- summary --------------------------------------------------------------------------------
    def _summarize(self, order: list[PhaseSpec]) -> None:
        st, now, gen = self.status, self.now, self.generation
        st.observed_generation = gen
        states = {p.name: self.phase_status(p) for p in order}
        # The phase that caused a failure first; the others were cancelled because of it.
        failed = sorted(
            (n for n, s in states.items() if s.state == "Failed"),
            key=lambda n: states[n].message == CANCELLED_BY_FAILURE,
        )
        active = [n for n, s in states.items() if s.state in ACTIVE_JOB_STATES and s.jobs]
        suspended = self.run.spec.suspend
        current = next((states[n] for n in active), None) or next(
            (s for s in reversed(states.values()) if s.step is not None), None
        )
        if current is not None:
            st.step, st.tokens, st.last_loss = current.step, current.tokens, current.last_loss

        if self.refused:
            names = ", ".join(self.refused)
            set_condition(
                st,
                "Invalid",
                "True",
                "SpecChangeRefused",
                f"phase(s) {names} already started; their spec, the model, image and seed cannot change. "
                "Revert the edit (running jobs continue with the spec they started with) or create a new "
                "OlmoRun.",
                now,
                gen,
            )
        else:
            set_condition(st, "Invalid", "False", "Valid", "the spec is valid", now, gen)
        set_condition(
            st,
            "Suspended",
            "True" if suspended else "False",
            "Suspended" if suspended else "NotSuspended",
            "spec.suspend is true: no job runs" if suspended else "",
            now,
            gen,
        )

        if failed:
            first = states[failed[0]]
            set_condition(st, "Succeeded", "False", "PhaseFailed", first.message, now, gen)
            set_condition(
                st,
                "Progressing",
                "False",
                "PhaseFailed",
                f"the run stopped: phase {failed[0]!r} failed",
                now,
                gen,
            )
            st.stage, st.active_phases = "Failed", []
        elif all(s.state == "Succeeded" for s in states.values()):
            set_condition(
                st, "Succeeded", "True", "Succeeded", f"all {len(states)} phases succeeded", now, gen
            )
            set_condition(st, "Progressing", "False", "Succeeded", "the run is complete", now, gen)
            st.stage, st.active_phases = "Succeeded", []
        elif suspended:
            set_condition(st, "Succeeded", "Unknown", "Suspended", "the run is suspended", now, gen)
            set_condition(st, "Progressing", "False", "Suspended", "spec.suspend is true", now, gen)
            st.stage, st.active_phases = "Suspended", []
        else:
            running = ", ".join(active) or "starting"
            set_condition(st, "Succeeded", "Unknown", "Running", f"running: {running}", now, gen)
            set_condition(st, "Progressing", "True", "Running", f"running: {running}", now, gen)
            st.stage, st.active_phases = ("Running" if active else "Pending"), active


def _final_checkpoints(phase: PhaseSpec, ps: PhaseStatus) -> list[str]:
    """The final checkpoint of every job of a succeeded phase (archived copy when there is one)."""
    out = []
    for job in ps.jobs:
        uri = job.archive or job.checkpoint
        if uri is not None:
            out.append(uri)
    return out


def plan(run: OlmoRun, observed: Observation, now: dt.datetime) -> Plan:
    """Decide every action and the whole new status of `run` from what was observed at `now`."""
    return _Planner(run, observed, now).plan()
