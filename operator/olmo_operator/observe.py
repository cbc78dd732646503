"""What one reconcile step reads: the storage and launcher side of `observe`, and the run's storage options.

For every job the status tracks: the launcher's view (`JobLauncher.describe`), the job's records
(failure.json, notice.json), its newest committed checkpoint and its last metrics line, and archives
an earlier step committed (re-verified, not recopied). Refused credentials or unreachable storage
become archive.StorageAccessError (`stored`), which the step turns into an observation
(`storage_problem`: the StorageUnavailable condition). Reads only: what a step changes is effects.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from fsspec import AbstractFileSystem

from olmo_operator import archive as arch
from olmo_operator import layout
from olmo_operator.actions import (
    ArchiveResult,
    JobObservation,
    MetricsLine,
    Observation,
    StorageProblem,
)
from olmo_operator.api import JobStatus, OlmoRun, PhaseSpec
from olmo_operator.plan import STORAGE_RETRY_SECONDS
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


def plain_options(options: Options) -> dict[str, Any] | None:
    return dict(options) if options is not None else None


def options_for(uri: str, options: Options) -> dict[str, Any]:
    return dict(options) if options is not None else arch.storage_options(uri)


def fresh_fs(uri: str, options: Options) -> tuple[AbstractFileSystem, str]:
    fs, path = storage.filesystem(uri, **options_for(uri, options))
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
    fs, path = fresh_fs(save_dir, options)
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
        total_steps=total if isinstance(total := source.get("total_steps"), int) and total > 0 else None,
    )


def newest_checkpoint(save_dir: str, options: Options = None) -> tuple[int, str] | None:
    """(step, uri) of the newest committed checkpoint under `<save_dir>/checkpoints/`.

    Raises archive.StorageAccessError when the storage refuses the credentials or cannot be reached.
    """
    return arch.latest_checkpoint(layout.checkpoints_dir(save_dir), options=plain_options(options))


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
            found = stored(save, _existing_archive, run, phase, job, storage_options)
            if found is not None:
                archives[found.key] = found
            continue
        described = launcher.describe(job.name)
        jobs[job.name] = stored(save, _observe_files, job, described, save, storage_options)
    return Observation(jobs=jobs, archives=archives)


def _observe_files(job: JobStatus, described: JobObservation, save: str, options: Options) -> JobObservation:
    """The launcher's view of a job completed with its save_dir: records, newest checkpoint, last metrics."""
    failure = notice = None
    if described.state in ("Failed", "Pending", "Running"):
        fresh_fs(save, options)  # drops cached listings: the records were written since the last look
    if described.state == "Failed":
        failure = read_failure(save, attempt=job.attempts, **options_for(save, options))
    elif described.state in ("Pending", "Running"):
        notice = read_notice(save, attempt=job.attempts, **options_for(save, options))
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


def stored(uri: str, call: Callable[..., _T], *args: Any) -> _T:
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
    report = arch.verify_checkpoint(dst, options=plain_options(options), workers=ARCHIVE_WORKERS)
    if not report.committed:
        return None
    key = layout.job_key(phase, job.seed)
    return ArchiveResult(key, job.checkpoint, dst, report.ok, report.summary(), retryable=not report.ok)


def spec_storage_options(run: OlmoRun) -> dict[str, Any]:
    """fsspec options of the run's storage (archive.run_storage_options, their one home)."""
    return arch.run_storage_options(run)
