"""One reconcile step, shared by the kopf handlers and `olmorun local`: parse -> observe -> plan -> apply.

    reconciler = Reconciler(launcher_for)          # namespace -> JobLauncher
    outcome = reconciler.step(document)            # the OlmoRun document with its current status
    persist(outcome.status); publish(outcome.events)

    result = reconcile_plan(run, launcher=launcher, now=now, storage_options=opts)   # the step on a parsed
    run

Storage reads are observe.py's, effects effects.py's; this module is the order of the step.

- observe: `launcher.describe` of every job the status expects to be active (or retrying: its last
  attempt may still be stopping), the newest committed
  checkpoint and the last metrics line of each job's save_dir, and archives already present.
- plan: plan.plan (pure) decides the actions and the complete new status.
- apply: write run.json and configs, submit, cancel, archive (copy + verify, archive.py). Archive results
  feed a second planning pass in the same step, so the status records them and children start at once.

No kopf and no sleeping here: the caller persists the returned status once and decides when to call
again (`requeue_after`, or a poll interval).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from olmo_operator import api, layout
from olmo_operator import archive as arch
from olmo_operator.actions import (
    ArchiveCheckpoint,
    CancelJob,
    Emit,
    JobObservation,
    Observation,
    SubmitJob,
)
from olmo_operator.api import OlmoRun, OlmoRunStatus
from olmo_operator.effects import apply
from olmo_operator.observe import JobLauncher, Options, observe, spec_storage_options, storage_problem
from olmo_operator.plan import (
    INVALID_REASON,
    Plan,
    condition,
    invalid_status,
    is_finished,
    plan,
)

# ---------------------------------------------------------------------------------------------
# Reconcile
# ---------------------------------------------------------------------------------------------


def reconcile_plan(
    run: OlmoRun, *, launcher: JobLauncher, now: dt.datetime, storage_options: Options = None
) -> Plan:
    """observe -> plan -> apply; after archiving, plan and apply once more with the results.

    Returns the final plan: `.status` to persist, `.events` (of both passes) to emit, `.requeue_after`.
    Storage that refuses the credentials or cannot be reached is an observation, not an error: the plan
    is then the planner's wait (condition StorageUnavailable) on the status as it was before this step;
    a job this step submitted before the storage failed is submitted again by the next one, under the
    same name, which the launcher answers as already there.
    """
    try:
        return _reconcile_plan(run, launcher=launcher, now=now, storage_options=storage_options)
    except arch.StorageAccessError as error:
        return plan(run, Observation(storage_problem=storage_problem(error, storage_options)), now)


def _reconcile_plan(
    run: OlmoRun, *, launcher: JobLauncher, now: dt.datetime, storage_options: Options
) -> Plan:
    observed = observe(run, launcher=launcher, storage_options=storage_options)
    first = plan(run, observed, now)
    archived = apply(run, first, launcher=launcher, storage_options=storage_options)
    if not archived:
        return first
    # Second pass on top of the first pass's status: the same observation, the archive results, and
    # the jobs the first pass submitted (Pending: they exist now), so nothing is done twice.
    after = run.model_copy(update={"status": first.status})
    submitted = {
        a.job_name: JobObservation(a.job_name, "Pending") for a in first.actions if isinstance(a, SubmitJob)
    }
    observed = Observation(
        jobs={**observed.jobs, **submitted}, archives={**observed.archives, **{a.key: a for a in archived}}
    )
    second = plan(after, observed, now)
    done = list(first.actions)  # actions hold lists and dicts: compared by equality, not hashed
    # Archives the second pass asks for again failed just now: they are retried at the next step.
    second.actions = [a for a in second.actions if not isinstance(a, ArchiveCheckpoint) and a not in done]
    apply(after, second, launcher=launcher, storage_options=storage_options)
    return Plan(second.status, [*first.actions, *second.actions], second.requeue_after)


def spec_fault(error: BaseException) -> str | None:
    """The message when `error` is the spec's fault, so that retrying cannot help; None otherwise.

    The spec's fault: a ValueError while planning or building a job (pydantic's ValidationError and
    api.SpecError are ValueErrors: a config resolved from the spec is invalid), and an API server
    answer 400/422 to a job we submit (admission refused what the spec describes). Not its fault: I/O
    (OSError, an unreachable API server, a 5xx), unreadable JSON in storage, or a run whose storage
    holds another run's files (StorageInUseError, handled on its own). The kopf handlers and
    `olmorun local` both turn a fault into `Invalid=True` with the message and stop retrying.
    """
    if isinstance(error, json.JSONDecodeError):
        return None
    if isinstance(error, ValueError):
        return str(error)
    status = getattr(error, "status", None)
    if isinstance(status, int) and status in (400, 422):
        body = getattr(error, "body", None)
        try:
            detail = json.loads(body).get("message", body) if body else getattr(error, "reason", "")
        except (TypeError, ValueError, AttributeError):
            detail = body
        return f"the API server refused a job of this run ({status}): {detail}"
    return None


# ---------------------------------------------------------------------------------------------
# The Reconciler: one step from an OlmoRun document
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one step decided: persist `status` once, publish `events`, call again after `requeue_after`."""

    status: OlmoRunStatus
    events: list[Emit]
    run: OlmoRun | None
    """The parsed run carrying the new status; None when the spec is invalid."""
    submitted: list[SubmitJob] = field(default_factory=list)
    cancelled: list[CancelJob] = field(default_factory=list)
    """Jobs this step stopped (a suspended run waits for them to be gone)."""
    requeue_after: float | None = None
    """Seconds until a timed decision (a retry backoff) falls due; None when nothing is waiting."""

    @property
    def finished(self) -> bool:
        """Nothing more happens without a spec change: succeeded, failed, or invalid."""
        return self.run is None or is_finished(self.status)


def unique_events(events: list[Emit]) -> list[Emit]:
    """Each event once, in order: the two planning passes of a step may decide the same one."""
    out: list[Emit] = []
    for event in events:
        if event not in out:
            out.append(event)
    return out


class Reconciler:
    """parse -> storage options for this run -> observe/plan/apply -> de-duplicated events.

    The kopf handlers and `olmorun local` both call `step`; each supplies only its status store (it
    persists `Outcome.status`), its event sink (it publishes `Outcome.events`) and its launchers.
    """

    def __init__(
        self,
        launcher_for: Callable[[str], JobLauncher],
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        options_for: Callable[[OlmoRun], Options] = spec_storage_options,
    ) -> None:
        self.launcher_for = launcher_for
        self.clock = clock
        self.options_for = options_for

    def step(self, document: Mapping[str, Any]) -> Outcome:
        """One reconcile of the run `document` describes (its `status` is the state to continue from).

        An invalid spec gets `Invalid=True` (reason InvalidSpec, every validation message), one
        Warning event (not repeated while the message stays the same) and no job; so does a spec
        that parses but fails on its way to a job (spec_fault), and that generation is not planned
        again. Raises what observe/apply raise otherwise: storage errors, Kubernetes ApiException
        (other than 400/422), StorageInUseError.
        """
        now = self.clock()
        try:
            run = api.parse_olmorun(dict(document))
        except api.SpecError as error:
            return self._invalid(document, str(error), now)
        if _invalid_at(run.status, run.metadata.generation):
            # This generation already failed on its way to a job (a timer or a resume raced the patch,
            # or the operator restarted): the same spec would fail the same way. Only an edit re-plans.
            return Outcome(run.status, [], None)
        announced = run.status.observed_generation == run.metadata.generation  # this spec was seen
        try:
            result = reconcile_plan(
                run, launcher=self.launcher_for(run.namespace), now=now, storage_options=self.options_for(run)
            )
        except Exception as error:
            fault = spec_fault(error)  # the spec's fault: Invalid, never retried as transient
            if fault is None:
                raise
            return self._invalid(document, fault, now)
        deprecated = (
            [] if announced else [Emit("Warning", "DeprecatedField", m) for m in api.deprecations(run)]
        )
        return Outcome(
            status=result.status,
            events=unique_events([*deprecated, *result.events]),
            run=run.model_copy(update={"status": result.status}),
            submitted=[a for a in result.actions if isinstance(a, SubmitJob)],
            cancelled=[a for a in result.actions if isinstance(a, CancelJob)],
            requeue_after=result.requeue_after,
        )

    @staticmethod
    def _invalid(document: Mapping[str, Any], message: str, now: dt.datetime) -> Outcome:
        old = OlmoRunStatus.model_validate(document.get("status") or {})
        generation = (document.get("metadata") or {}).get("generation")
        status = invalid_status(old, message, now, generation)
        was = condition(old, "Invalid")
        repeated = was is not None and (was.status, was.reason, was.message) == (
            "True",
            INVALID_REASON,
            message,
        )
        return Outcome(status, [] if repeated else [Emit("Warning", INVALID_REASON, message)], None)

    @staticmethod
    def job_names(document: Mapping[str, Any]) -> list[str]:
        """Every job a run may have submitted: each attempt of each job its status records."""
        status = OlmoRunStatus.model_validate(document.get("status") or {})
        try:
            run: OlmoRun | None = api.parse_olmorun(dict(document))
        except api.SpecError:
            run = None
        names: list[str] = []
        for phase_name, ps in status.phases.items():
            for job in ps.jobs:
                names.append(job.name)
                if run is not None and any(p.name == phase_name for p in run.spec.phases):
                    phase = run.phase(phase_name)
                    names += [layout.job_name(run, phase, job.seed, a) for a in range(1, job.attempts + 1)]
        return list(dict.fromkeys(names))


def _invalid_at(status: OlmoRunStatus, generation: int | None) -> bool:
    """True when this generation of the spec was found invalid (Invalid=True, reason InvalidSpec)."""
    invalid = condition(status, "Invalid")
    return (
        invalid is not None
        and (invalid.status, invalid.reason) == ("True", INVALID_REASON)
        and status.observed_generation == generation
    )
