"""The planner's vocabulary: what reconcile observed (inputs) and what the planner asks for (actions). Pure.

    observed = Observation(jobs={name: JobObservation(name, "Running", metrics=MetricsLine(step=10))})
    result = plan.plan(run, observed, now)          # decisions live in plan.py
    for action in result.actions: ...               # SubmitJob | CancelJob | ArchiveCheckpoint |
    WriteRunRecord | Emit

reconcile.py fills the observations (launcher.describe, the save_dir, the archive) and carries out
the actions; preview.py fills them with a world in which every job succeeds. Plain frozen dataclasses,
compared by value: reconcile's second planning pass drops actions equal to ones already done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from olmo_operator.request import JobRequest
from olmo_trainer.config import TrainConfig

# ---------------------------------------------------------------------------------------------
# Observation: what reconcile saw
# ---------------------------------------------------------------------------------------------

ObservedState = Literal["Pending", "Running", "Succeeded", "Failed", "Missing"]


@dataclass(frozen=True)
class MetricsLine:
    """What a job's metrics.jsonl last said (olmo_trainer.tracking writes one line per optimizer step):
    the step of its last line, the loss of the last line that has one, and the final evaluation."""

    step: int
    tokens: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    """The job's final evaluation, `eval/<task>/<metric>` keys, once it logged one."""
    lr: float | None = None
    grad_norm: float | None = None
    """Learning rate and gradient norm of the last training step (the progress line shows them)."""
    total_steps: int | None = None
    """The job's budget in steps as the trainer planned it (every kind; the only source for an SFT or DPO
    phase that trains for `epochs`)."""


@dataclass(frozen=True)
class JobObservation:
    """One job as the scheduler and its save_dir show it."""

    name: str
    state: ObservedState
    exit_code: int | None = None
    preempted: bool = False
    """Stopped by SIGTERM (eviction, preemption, node drain): resubmitted without counting a failure."""
    message: str = ""
    terminating: bool = False
    """Cancelled, its pods still stopping: not cancelled again, and not replaced until it is gone
    (two attempts must never write to the same save_dir)."""
    checkpoint: tuple[int, str] | None = None
    """Newest committed checkpoint (step, uri) in the job's save_dir."""
    metrics: MetricsLine | None = None
    notice: tuple[str, str] | None = None
    """(reason, message) the running attempt left (olmo_trainer.layout.NOTICE_NAME), or, for a job whose pods
    cannot start, the launcher's (a Secret that does not exist): shown in the job's message, and emitted
    as a Warning event when it first appears."""
    failure_reason: str | None = None
    """Set when the failed attempt recorded why retrying cannot help (olmo_trainer.failure: Diverged,
    InvalidConfig, NoIntactCheckpoint): the job fails at once, with this reason, and is not retried."""


@dataclass(frozen=True)
class ArchiveResult:
    """The outcome of copying and verifying one final checkpoint."""

    key: str
    """layout.job_key of the job whose checkpoint was archived."""
    src: str
    dst: str
    ok: bool
    message: str = ""
    retryable: bool = False
    """A transient I/O error (try again next reconcile) rather than a checksum mismatch."""


@dataclass(frozen=True)
class StorageProblem:
    """The run's storage could not be read or written during this step: nothing about the jobs' files is
    known, so the planner decides nothing but waits (condition StorageUnavailable)."""

    reason: Literal["Unreachable", "AccessDenied"]
    message: str
    """Names the storage URI and endpoint and what the client said; never a credential."""


@dataclass(frozen=True)
class Observation:
    jobs: dict[str, JobObservation] = field(default_factory=dict)
    """By job name. A job absent from this map is Missing."""
    archives: dict[str, ArchiveResult] = field(default_factory=dict)
    """By layout.job_key."""
    storage_problem: StorageProblem | None = None
    """Set when the storage failed this step; `jobs` and `archives` are then empty and mean nothing."""


# ---------------------------------------------------------------------------------------------
# Actions: what to do
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitJob:
    """Write the job's config (when it starts now), then create the job the request describes."""

    phase: str
    seed: int
    attempt: int
    train_config: TrainConfig
    request: JobRequest
    """Built once by the planner (request.job_request): name, placement, command, config URI."""
    write_config: bool = True
    """True when the phase starts now (write config_uri); False for a retry or resubmission, which runs
    the config written when the job started (written only if missing), so a refused edit never leaks in."""

    @property
    def job_name(self) -> str:
        return self.request.name

    @property
    def config_uri(self) -> str:
        return self.request.config_uri


@dataclass(frozen=True)
class CancelJob:
    job_name: str
    reason: str = ""


@dataclass(frozen=True)
class ArchiveCheckpoint:
    phase: str
    seed: int
    key: str
    src: str
    dst: str


@dataclass(frozen=True)
class WriteRunRecord:
    """Write run.json, the run's reproducibility record, once."""

    uri: str
    document: dict[str, object]
    """Spec, image, seeds; apply adds the software versions."""


@dataclass(frozen=True)
class Emit:
    """A Kubernetes Event (or a line of `olmorun local` output)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = SubmitJob | CancelJob | ArchiveCheckpoint | WriteRunRecord | Emit
