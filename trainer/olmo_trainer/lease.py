"""Fencing: one writer per job directory. `<save_dir>/lease.json` names the attempt that owns it.

A job's save_dir is the same for every attempt of the job (layout.lease_uri), so two attempts can be
alive at once: a pod that outlives its Volcano Job after a node partition, a local runner's orphaned
processes, a retry submitted while the old attempt still shuts down. Only the lease's holder may
commit a checkpoint (write a MANIFEST) or delete anything under the save_dir (retention, clearing a
crashed save, un-committing a damaged checkpoint). Every other writer is fenced off.

    lease = Lease.for_job(cfg.save_dir)       # this process: the operator's attempt, a fresh holder token
    lease.acquire()                           # at start: Fenced if a NEWER attempt holds it
    lease.check("commit step40")              # right before a commit or a deletion: Fenced unless ours
    lease.renew()                             # while training (at most every `renew_seconds`)

Rules (pure, `refusal`): attempt numbers are monotonic per job key (the operator's planner counts
them, and the save_dir is per job key), so a newer attempt takes the lease over unconditionally and an
older one never does; the same attempt started again (a rerun after SIGKILL, a process outside the
operator with no attempt, counted as 0) takes it over too, because its earlier holder is gone or is a
zombie of itself. Ownership is the holder token, not the clock: there is no expiry, so clock skew
between nodes cannot hand the directory to two writers. `renewedAt`/`renewals` only show liveness.

Limits. fsspec has no compare-and-swap on every backend, so a renewal is read-compare-write: if a newer
attempt takes over inside the one round trip between an old holder's read and its write, the old
holder's write wins and the newer attempt retakes the lease at its next check (a lower attempt is
never a legitimate owner). The old holder is then refused at its own next check; what it can do in
that window is at most one commit. Checks run right before each commit and deletion, and before a
save writes any file, which keeps that window to a single step directory.

A fenced attempt stops with PermanentFailure reason `Fenced` (recorded by __main__ through failure.py,
exit EXIT_PERMANENT): the operator reads the record only for its current attempt, so a zombie's
record never fails the newer one. Torch-free: the operator may read a lease.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from olmo_trainer import storage
from olmo_trainer.failure import PermanentFailure, current_attempt
from olmo_trainer.layout import lease_uri

FENCED_REASON = "Fenced"
"""failure.json reason of an attempt refused by the lease."""
RENEW_SECONDS = 30.0
"""How often a training job rewrites its lease's `renewedAt` (one small write; a step boundary at most)."""
JOB_NAME_ENV = "TORCHELASTIC_RUN_ID"
"""torchrun's run id: both launchers pass the job name as `--rdzv_id` (olmo_operator.launcher)."""
FORMAT = "olmorun.lease/v1"


@dataclass(frozen=True)
class LeaseRecord:
    """What lease.json holds."""

    job: str
    """The job name (`<run>-<phase>[-s<seed>]-a<attempt>`), or the save_dir outside the operator."""
    attempt: int
    """The operator's attempt number (failure.current_attempt); 0 outside the operator."""
    holder: str
    """`<host>:<pid>:<random>` of the process that acquired it: tells two starts of one attempt apart."""
    acquired_at: str
    renewed_at: str
    renewals: int = 0

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, blob: bytes | str) -> LeaseRecord | None:
        """The record, or None when `blob` is not a lease (torn, foreign or garbage bytes)."""
        try:
            data = json.loads(blob)
            return cls(
                job=str(data["job"]),
                attempt=int(data["attempt"]),
                holder=str(data["holder"]),
                acquired_at=str(data["acquired_at"]),
                renewed_at=str(data["renewed_at"]),
                renewals=int(data.get("renewals", 0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class Fenced(PermanentFailure):
    """This attempt does not hold its save_dir's lease: it must not commit or delete anything there."""

    def __init__(self, message: str) -> None:
        super().__init__(FENCED_REASON, message)


# ---------------------------------------------------------------------------------------------
# Pure rules
# ---------------------------------------------------------------------------------------------


def may_acquire(held: LeaseRecord | None, attempt: int) -> bool:
    """True when an attempt may take the lease: nobody holds it, or its holder is not newer."""
    return held is None or held.attempt <= attempt


def refusal(held: LeaseRecord | None, *, attempt: int, holder: str, action: str, where: str) -> str | None:
    """Why (`attempt`, `holder`) may not do `action` in `where` given the lease `held`; None when it may.

    A missing or unreadable lease refuses too: the holder wrote one when it started, so it was deleted
    or overwritten by something that is not an attempt of this job.
    """
    if held is None:
        return f"{action} refused: {where} has no readable lease; this attempt ({attempt}) no longer owns it"
    if held.holder == holder:
        return None
    if held.attempt > attempt:
        return (
            f"{action} refused: attempt {attempt} is stale; {where} belongs to attempt {held.attempt} "
            f"({held.job}, {held.holder}) since {held.acquired_at}. This process is a leftover of an older "
            "attempt (a pod or process that outlived its job) and stops without writing"
        )
    return (
        f"{action} refused: {where} was taken over by another start of attempt {held.attempt} "
        f"({held.job}, {held.holder}) at {held.acquired_at}; this process stops without writing"
    )


# ---------------------------------------------------------------------------------------------
# The lease of one job directory
# ---------------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_holder() -> str:
    """A token no other process has: host, pid, and randomness (pids are reused, hosts are shared)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """The lease of `save_dir` as seen by one attempt (rank 0 of a job: the only rank that commits)."""

    def __init__(
        self,
        save_dir: str,
        *,
        job: str,
        attempt: int,
        holder: str | None = None,
        storage_options: dict[str, Any] | None = None,
        renew_seconds: float = RENEW_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.save_dir = save_dir
        self.uri = lease_uri(save_dir)
        self.job = job
        self.attempt = attempt
        self.holder = holder or new_holder()
        self.storage_options = dict(storage_options or {})
        self.renew_seconds = renew_seconds
        self._monotonic = monotonic
        self._renewed = -float("inf")
        self._record: LeaseRecord | None = None

    @classmethod
    def for_job(cls, save_dir: str, **kwargs: Any) -> Lease:
        """This process's lease on `save_dir`: the launcher's attempt and job name (0 / the save_dir
        outside the operator)."""
        job = os.environ.get(JOB_NAME_ENV) or save_dir
        return cls(save_dir, job=job, attempt=current_attempt() or 0, **kwargs)

    def _fs(self) -> tuple[Any, str]:
        fs, path = storage.filesystem(self.uri, **self.storage_options)
        fs.invalidate_cache(path)  # another process wrote it: never trust a cached listing
        return fs, path

    def read(self) -> LeaseRecord | None:
        """The lease as stored now; None when there is none or it cannot be parsed."""
        fs, path = self._fs()
        try:
            return LeaseRecord.from_json(fs.cat_file(path))
        except FileNotFoundError:
            return None

    def _write(self, record: LeaseRecord) -> None:
        fs, path = self._fs()
        storage.write_atomic(fs, path, record.to_json().encode())  # a reader never sees half a file
        self._record = record

    def acquire(self) -> LeaseRecord:
        """Take the lease (a newer attempt than the holder, or the same one started again).

        Raises Fenced when a newer attempt holds it, or when a concurrent start took it between this
        process's write and its read-back.
        """
        held = self.read()
        if not may_acquire(held, self.attempt):
            assert held is not None
            raise Fenced(self._refused("start", held))
        stamp = _now()
        self._write(LeaseRecord(self.job, self.attempt, self.holder, stamp, stamp))
        self._renewed = self._monotonic()
        self.check("start")  # read back: of two concurrent starts, only the last writer continues
        assert self._record is not None
        return self._record

    def check(self, action: str) -> None:
        """Raise Fenced unless this process holds the lease now. Call right before a commit or deletion.

        A lease naming an OLDER attempt than ours (an old holder's renewal raced our takeover) is
        retaken: attempts are monotonic, a lower one is never the owner.
        """
        held = self.read()
        if held is not None and held.holder != self.holder and held.attempt < self.attempt:
            stamp = _now()
            self._write(LeaseRecord(self.job, self.attempt, self.holder, stamp, stamp))
            held = self.read()
        problem = refusal(held, attempt=self.attempt, holder=self.holder, action=action, where=self.save_dir)
        if problem is not None:
            raise Fenced(problem)

    def renew(self, *, force: bool = False) -> bool:
        """Rewrite `renewedAt` and count it, at most every `renew_seconds` unless forced.

        Returns True when it wrote. Raises Fenced when the lease is no longer ours.
        """
        if not force and self._monotonic() - self._renewed < self.renew_seconds:
            return False
        held = self.read()
        problem = refusal(
            held, attempt=self.attempt, holder=self.holder, action="renewal", where=self.save_dir
        )
        if problem is not None:
            raise Fenced(problem)
        assert held is not None
        self._write(replace(held, renewed_at=_now(), renewals=held.renewals + 1))
        self._renewed = self._monotonic()
        return True

    def _refused(self, action: str, held: LeaseRecord) -> str:
        problem = refusal(held, attempt=self.attempt, holder=self.holder, action=action, where=self.save_dir)
        return problem or f"{action} refused by the lease of {self.save_dir}"


__all__ = ["FENCED_REASON", "Fenced", "Lease", "LeaseRecord", "may_acquire", "new_holder", "refusal"]
