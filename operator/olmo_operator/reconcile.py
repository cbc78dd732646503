"""One reconcile step, shared by the kopf handlers and `olmorun local`: parse -> observe -> plan -> apply.

    reconciler = Reconciler(launcher_for)          # namespace -> JobLauncher
    outcome = reconciler.step(document)            # the OlmoRun document with its current status
    persist(outcome.status); publish(outcome.events)

    result = reconcile_plan(run, launcher=launcher, now=now, storage_options=opts)   # the step on a parsed
    run

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
import functools
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol, TypeVar

from fsspec import AbstractFileSystem

from olmo_operator import api, layout
from olmo_operator import archive as arch
from olmo_operator.actions import (
    ArchiveCheckpoint,
    ArchiveResult,
    CancelJob,
    Emit,
    JobObservation,
    MetricsLine,
    Observation,
    StorageProblem,
    SubmitJob,
    WriteRunRecord,
)
from olmo_operator.api import JobStatus, OlmoRun, OlmoRunStatus, PhaseSpec
from olmo_operator.plan import (
    INVALID_REASON,
    STORAGE_RETRY_SECONDS,
    Plan,
    condition,
    invalid_status,
    is_finished,
    plan,
)
from olmo_operator.request import JobRequest
from olmo_trainer import metrics_log, storage
from olmo_trainer.failure import read_failure, read_notice

ARCHIVE_WORKERS = 8
_METRICS_TAIL = 64 * 1024  # bytes read from the end of the metrics record: the last lines are all we need


class JobLauncher(Protocol):
    """What reconcile needs from a launcher: launcher_volcano.VolcanoLauncher, launcher_local.LocalLauncher
    (tests may pass any object with these)."""

    def submit(self, request: JobRequest) -> str:
        """Create the job; a job of that name that exists already is not an error."""
        ...

    def describe(self, job_name: str) -> JobObservation: ...

    def cancel(self, job_name: str) -> None: ...


Options = Mapping[str, Any] | None
"""fsspec storage options; None: from the environment (archive.storage_options)."""


def _plain(options: Options) -> dict[str, Any] | None:
    return dict(options) if options is not None else None


def _options(uri: str, options: Options) -> dict[str, Any]:
    return dict(options) if options is not None else arch.storage_options(uri)


def _fs(uri: str, options: Options) -> tuple[AbstractFileSystem, str]:
    fs, path = storage.filesystem(uri, **_options(uri, options))
    fs.invalidate_cache()  # a long-lived operator must see what the jobs wrote since its last step
    return fs, path


# ---------------------------------------------------------------------------------------------
# Observe
# ---------------------------------------------------------------------------------------------


def _tracked_jobs(run: OlmoRun) -> list[tuple[PhaseSpec, JobStatus]]:
    out = []
    for phase in run.spec.phases:
        ps = run.status.phases.get(phase.name)
        for job in ps.jobs if ps else []:
            out.append((phase, job))
    return out


def last_metrics(save_dir: str, options: Options = None) -> MetricsLine | None:
    """What a job's metrics record (olmo_trainer.metrics_log: metrics.jsonl, or its segments on an object
    store) last said, None when it is absent or empty: the step of its last complete line, the loss of
    the last training step's line and the `eval/...` figures of the last line that has them (a final
    evaluation is logged on a line of its own, after the last training step, without a `loss` key).

    A training line always has the `loss` key; it is null when the loss was not finite (the job then
    stops as Diverged), and the loss returned is then None: never an older step's finite loss, which
    would hide the divergence."""
    fs, path = _fs(save_dir, options)
    text = metrics_log.tail_text(fs, path.rstrip("/"), _METRICS_TAIL)
    last: dict[str, Any] | None = None
    loss_row: dict[str, Any] | None = None
    evaluation: dict[str, float] = {}
    for line in reversed(text.splitlines()):
        row = metrics_log.parse_line(line)  # None: being written, the tail's cut-off first line, ...
        if row is None or not isinstance(row.get("step"), int):
            continue
        last = last or row
        if loss_row is None and "loss" in row:
            loss_row = row
        if not evaluation:
            evaluation = {
                k: float(v) for k, v in row.items() if k.startswith("eval/") and isinstance(v, int | float)
            }
        if loss_row is not None and evaluation:
            break
    if last is None:
        return None
    source = loss_row or last
    return MetricsLine(
        step=last["step"],
        tokens=source.get("tokens"),
        loss=source.get("loss"),
        tokens_per_s=source.get("tokens_per_s"),
        eval=evaluation,
        lr=source.get("lr"),
        grad_norm=source.get("grad_norm"),
    )


def newest_checkpoint(save_dir: str, options: Options = None) -> tuple[int, str] | None:
    """(step, uri) of the newest committed checkpoint under `<save_dir>/checkpoints/`.

    Raises archive.StorageAccessError when the storage refuses the credentials or cannot be reached.
    """
    return arch.latest_checkpoint(layout.checkpoints_dir(save_dir), options=_plain(options))


def observe(run: OlmoRun, *, launcher: JobLauncher, storage_options: Options = None) -> Observation:
    """Everything plan() needs to know about the world, for the jobs the status tracks.

    Raises archive.StorageAccessError when the storage refuses the credentials or cannot be reached
    (reconcile_plan turns it into Observation.storage_problem); the launcher's own errors as they are.
    """
    jobs: dict[str, JobObservation] = {}
    archives: dict[str, ArchiveResult] = {}
    for phase, job in _tracked_jobs(run):
        if job.attempts > 0 and job.state == "Retrying":
            # Its last attempt may still be stopping (cancelled because it hung): not replaced until gone.
            jobs[job.name] = launcher.describe(job.name)
            continue
        if job.attempts == 0 or job.state not in ("Pending", "Running", "Succeeded"):
            continue
        save = layout.save_dir(run, phase, job.seed)
        if job.state == "Succeeded":
            found = _stored(save, _existing_archive, run, phase, job, storage_options)
            if found is not None:
                archives[found.key] = found
            continue
        described = launcher.describe(job.name)
        jobs[job.name] = _stored(save, _observe_files, job, described, save, storage_options)
    return Observation(jobs=jobs, archives=archives)


def _observe_files(job: JobStatus, described: JobObservation, save: str, options: Options) -> JobObservation:
    """The launcher's view of a job completed with its save_dir: records, newest checkpoint, last metrics."""
    failure = notice = None
    if described.state in ("Failed", "Pending", "Running"):
        _fs(save, options)  # drops cached listings: the records were written since the last look
    if described.state == "Failed":
        failure = read_failure(save, attempt=job.attempts, **_options(save, options))
    elif described.state in ("Pending", "Running"):
        notice = read_notice(save, attempt=job.attempts, **_options(save, options))
    return JobObservation(
        name=job.name,
        state=described.state,
        exit_code=described.exit_code,
        preempted=described.preempted,
        message=failure.message if failure else described.message,
        failure_reason=failure.reason if failure else None,
        notice=notice or described.notice,  # the job's own, else why its pods cannot start
        terminating=described.terminating,
        checkpoint=newest_checkpoint(save, options),
        metrics=last_metrics(save, options),
    )


_T = TypeVar("_T")


def _stored(uri: str, call: Callable[..., _T], *args: Any) -> _T:
    """`call(*args)`: storage I/O on uri, tried again with backoff while the storage is busy or
    unreachable (archive.retrying); refused credentials and unreachable storage become
    archive.StorageAccessError."""
    try:
        return arch.retrying(lambda: call(*args))
    except Exception as error:
        access = arch.access_error(uri, error)
        if access is None:
            raise
        raise access from None


def storage_problem(error: arch.StorageAccessError, options: Options) -> StorageProblem:
    """What the StorageUnavailable condition says: the endpoint, the client's words, never a credential."""
    endpoint = (options or {}).get("endpoint_url")
    where = f" (endpoint {endpoint})" if endpoint else ""
    message = (
        f"storage cannot be used{where}: {error}; the run waits (no job fails, no checkpoint is touched) "
        f"and tries again every {STORAGE_RETRY_SECONDS:.0f}s"
    )
    for key in ("key", "secret", "token"):
        value = (options or {}).get(key)
        if isinstance(value, str) and len(value) >= 4:
            message = message.replace(value, "***")
    return StorageProblem("AccessDenied" if error.denied else "Unreachable", message)


def _existing_archive(
    run: OlmoRun, phase: PhaseSpec, job: JobStatus, options: Options
) -> ArchiveResult | None:
    """An archive committed by an earlier step whose status write was lost: verify it, don't recopy."""
    if job.archive or not job.checkpoint or not phase.archive_final:
        return None
    step = layout.step_of(job.checkpoint)
    dst = layout.archive_uri(run, phase, job.seed, step if step is not None else 0)
    report = arch.verify_checkpoint(dst, options=_plain(options), workers=ARCHIVE_WORKERS)
    if not report.committed:
        return None
    key = layout.job_key(phase, job.seed)
    return ArchiveResult(key, job.checkpoint, dst, report.ok, report.summary(), retryable=not report.ok)


# ---------------------------------------------------------------------------------------------
# Apply
# ---------------------------------------------------------------------------------------------


@functools.cache
def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("olmorun", "torchx-nightly", "kopf", "pydantic", "fsspec"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


class StorageInUseError(RuntimeError):
    """The run's storage path holds another OlmoRun's files (same name, different uid): resuming
    from them would silently continue someone else's training."""


ADOPT_ANNOTATION = "olmorun.dev/adopt-storage-of"
"""On a recreated OlmoRun: the uid of the earlier run of this name whose storage it continues (its
run.json is kept, its checkpoints resumed, its archives verified). Said on purpose, never guessed."""


def write_run_record(action: WriteRunRecord, options: Options, adopt: str | None = None) -> None:
    """run.json is written once: a run's reproducibility record is never rewritten. A run.json of a
    different OlmoRun (a deleted run recreated under the same name) stops the run instead, unless the
    new run names that OlmoRun's uid in its ADOPT_ANNOTATION (`adopt`): then it continues its files.

    Raises StorageInUseError in that case, and the storage's own errors when it cannot be written.
    """
    fs, path = _fs(action.uri, options)
    if fs.exists(path):
        previous = json.loads(fs.cat_file(path)).get("metadata", {}).get("uid")
        metadata = action.document.get("metadata")
        current = metadata.get("uid") if isinstance(metadata, dict) else None
        if previous and current and previous != current and adopt != previous:
            raise StorageInUseError(
                f"{action.uri} belongs to an earlier OlmoRun of this name (uid {previous}). To continue "
                f"it (its checkpoints and archives are kept and resumed), annotate this OlmoRun "
                f"{ADOPT_ANNOTATION}={previous}; to start afresh, give this run another name."
            )
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, json.dumps({**action.document, "versions": _versions()}, indent=2).encode())


def write_config(action: SubmitJob, options: Options) -> None:
    fs, path = _fs(action.config_uri, options)
    if not action.write_config and fs.exists(path):
        return  # a retry runs exactly the config its phase started with
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, action.train_config.to_json().encode())


def archive(action: ArchiveCheckpoint, options: Options) -> ArchiveResult:
    """Copy a final checkpoint to the archive and re-hash it there (archive.py).

    Busy or unreachable storage (503 SlowDown, a restart) is tried again with backoff (archive.retrying),
    then raises archive.StorageAccessError, as refused credentials do: the run then waits with
    StorageUnavailable, the source kept, and the next step resumes the copy. Another I/O error is worth
    another try; a source that is corrupt or not committed, or a destination holding a different
    checkpoint, is not.
    """
    opts = _plain(options)

    def copy_and_verify() -> Any:  # a retry resumes the copy: objects already up are skipped
        arch.archive_checkpoint(
            action.src, action.dst, src_options=opts, dst_options=opts, workers=ARCHIVE_WORKERS
        )
        return arch.verify_checkpoint(action.dst, options=opts, workers=ARCHIVE_WORKERS)

    try:
        report = arch.retrying(copy_and_verify)  # busy storage is retried, then the run waits
    except arch.StorageAccessError:
        raise
    except OSError as error:
        return ArchiveResult(action.key, action.src, action.dst, ok=False, message=str(error), retryable=True)
    except arch.ArchiveError as error:
        return ArchiveResult(action.key, action.src, action.dst, ok=False, message=str(error))
    return ArchiveResult(action.key, action.src, action.dst, ok=report.ok, message=report.summary())


def apply(
    run: OlmoRun, result: Plan, *, launcher: JobLauncher, storage_options: Options = None
) -> list[ArchiveResult]:
    """Carry out a plan's actions in order; returns the archive results for a second planning pass.

    Raises archive.StorageAccessError when the storage refuses the credentials or cannot be reached.
    """
    archived = []
    for action in result.actions:
        if isinstance(action, WriteRunRecord):
            adopt = run.metadata.annotations.get(ADOPT_ANNOTATION)
            _stored(action.uri, write_run_record, action, storage_options, adopt)
        elif isinstance(action, SubmitJob):
            _stored(action.config_uri, write_config, action, storage_options)
            launcher.submit(action.request)
        elif isinstance(action, CancelJob):
            launcher.cancel(action.job_name)
        elif isinstance(action, ArchiveCheckpoint):
            archived.append(archive(action, storage_options))
    return archived


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


def spec_storage_options(run: OlmoRun) -> dict[str, Any]:
    """fsspec options of the run's storage (archive.run_storage_options, their one home)."""
    return arch.run_storage_options(run)


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
        """Nothing more happens without a spec change: succeeded, failed, blocked, or invalid."""
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
