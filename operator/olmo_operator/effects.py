"""What one reconcile step changes: the effects of `apply` on storage and the launcher.

The plan's actions in order: write run.json once (a run's reproducibility record, never rewritten; a
run.json of another OlmoRun of the same name stops the run), write a job's config, submit or cancel a
job, archive a final checkpoint (copy and verify, archive.py). Archive results go back to the step
(reconcile.py), which plans a second pass with them.
"""

from __future__ import annotations

import functools
import json
import platform
from importlib import metadata
from typing import Any

from olmo_operator import archive as arch
from olmo_operator.actions import (
    ArchiveCheckpoint,
    ArchiveResult,
    CancelJob,
    SubmitJob,
    WriteRunRecord,
)
from olmo_operator.api import OlmoRun
from olmo_operator.observe import ARCHIVE_WORKERS, JobLauncher, Options, fresh_fs, plain_options, stored
from olmo_operator.plan import Plan


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
    fs, path = fresh_fs(action.uri, options)
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
    fs, path = fresh_fs(action.config_uri, options)
    if not action.write_config and fs.exists(path):
        return  # a retry runs exactly the config its phase started with
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, action.train_config.to_json().encode())


def archive_final(action: ArchiveCheckpoint, options: Options) -> ArchiveResult:
    """Copy a final checkpoint to the archive and re-hash it there (archive.py).

    Busy or unreachable storage (503 SlowDown, a restart) is tried again with backoff (archive.retrying),
    then raises archive.StorageAccessError, as refused credentials do: the run then waits with
    StorageUnavailable, the source kept, and the next step resumes the copy. Another I/O error is worth
    another try; a source that is corrupt or not committed, or a destination holding a different
    checkpoint, is not.
    """
    opts = plain_options(options)

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
            stored(action.uri, write_run_record, action, storage_options, adopt)
        elif isinstance(action, SubmitJob):
            stored(action.config_uri, write_config, action, storage_options)
            launcher.submit(action.request)
        elif isinstance(action, CancelJob):
            launcher.cancel(action.job_name)
        elif isinstance(action, ArchiveCheckpoint):
            archived.append(archive_final(action, storage_options))
    return archived
