"""Why a job failed when retrying cannot help: `<save_dir>/failure.json`, written by the job, read by the
operator.

torchrun reports any worker's failure as exit status 1, so the exit code cannot tell the operator that a
job diverged or was given data it cannot train on. The job says so in a small record beside its
checkpoints; the operator (observe.py) reads it for a failed attempt, marks the job Failed with
the reason and does not retry it.

    raise PermanentFailure("Diverged", "loss nan at step 2", step=2)     # in the trainer
    record_failure(save_dir, failure)                                     # __main__, then exit EXIT_PERMANENT
    (layout)
    read_failure(save_dir, attempt=3)                                     # the operator: Failure | None

A job that carries on after something worth knowing (it skipped a damaged checkpoint) leaves a
`notice.json` the same way; the operator shows it in the job's status message and as an Event.

Reasons: `Diverged` (a non-finite loss or gradient norm), `InvalidConfig` (a config, or data, that this
job cannot train on), `NoIntactCheckpoint` (every committed checkpoint to resume from is damaged).
Torch-free: the operator imports it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from olmo_trainer.layout import EXIT_PERMANENT, failure_uri, notice_uri
from olmo_trainer.storage import open_uri

__all__ = [
    "EXIT_PERMANENT",
    "Failure",
    "PermanentFailure",
    "read_failure",
    "read_notice",
    "record_failure",
    "record_notice",
]

ATTEMPT_ENV = "OLMORUN_ATTEMPT"
"""Set by the launcher on every job: a record names the attempt that wrote it, so an old one is ignored."""


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    step: int | None = None
    attempt: int | None = None


class PermanentFailure(Exception):
    """Ends a job with a recorded reason; the operator will not retry it."""

    def __init__(self, reason: str, message: str, *, step: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.failure = Failure(reason, message, step)


def current_attempt() -> int | None:
    value = os.environ.get(ATTEMPT_ENV, "")
    return int(value) if value.isdigit() else None


def record_failure(save_dir: str, failure: Failure, **storage_options: Any) -> None:
    """Write the record for this attempt (best effort: a storage error must not hide the failure itself)."""
    record = {**asdict(failure), "attempt": current_attempt()}
    try:
        with open_uri(failure_uri(save_dir), "w", **storage_options) as f:
            json.dump(record, f)
    except OSError:
        pass


def read_failure(save_dir: str, *, attempt: int, **storage_options: Any) -> Failure | None:
    """The record of `attempt`, or None (no record, another attempt's, or unreadable)."""
    try:
        with open_uri(failure_uri(save_dir), "r", **storage_options) as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("attempt") != attempt:
        return None
    return Failure(str(record.get("reason", "")), str(record.get("message", "")), record.get("step"), attempt)


def record_notice(save_dir: str, reason: str, message: str, **storage_options: Any) -> None:
    """Leave `reason: message` for the operator to show while this attempt runs (best effort)."""
    record = {"reason": reason, "message": message, "attempt": current_attempt()}
    try:
        with open_uri(notice_uri(save_dir), "w", **storage_options) as f:
            json.dump(record, f)
    except OSError:
        pass


def read_notice(save_dir: str, *, attempt: int, **storage_options: Any) -> tuple[str, str] | None:
    """(reason, message) of `attempt`'s notice, or None."""
    try:
        with open_uri(notice_uri(save_dir), "r", **storage_options) as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("attempt") != attempt:
        return None
    return str(record.get("reason", "")), str(record.get("message", ""))
