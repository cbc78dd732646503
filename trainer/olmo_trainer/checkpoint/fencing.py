"""Fencing: a checkpoint write or deletion happens only while this attempt holds the job's lease.

Given the job's lease (lease.py; rank 0's, None on other ranks and outside a job), rank 0 checks it right
before every MANIFEST write and every deletion (retention, clearing a crashed save, un-committing a
damaged checkpoint), and before a save writes its first file. An attempt that no longer holds the lease
raises lease.Fenced on every rank (collective.decided_by_rank0 carries it) and writes nothing more: two
attempts alive at once never both write one job directory.
"""

from __future__ import annotations

import logging

from olmo_trainer.checkpoint import collective
from olmo_trainer.lease import Fenced, Lease

log = logging.getLogger(__name__)

__all__ = ["Fence"]


class Fence:
    """The lease checks of one job's checkpointing; without a lease nothing is fenced."""

    def __init__(self, lease: Lease | None) -> None:
        self.lease = lease

    def check(self, action: str) -> None:
        """Rank 0, right before a commit or deletion: raise lease.Fenced unless this attempt holds the
        lease."""
        if self.lease is not None:
            self.lease.check(action)

    def acquire(self) -> None:
        """Take the job directory's lease at start (collective); raises lease.Fenced on every rank when
        a newer attempt holds it. No-op without a lease."""

        def acquire() -> None:
            if self.lease is not None:
                self.lease.acquire()

        collective.decided_by_rank0(acquire)

    def renew(self) -> bool:
        """Rank 0 while training: renew the lease when due. False when it is lost (the caller stops the
        job; its next save is refused); True otherwise, and on other ranks."""
        if self.lease is None or collective.rank() != 0:
            return True
        try:
            self.lease.renew()
        except Fenced as error:
            log.error("%s", error.failure.message)
            return False
        return True

    def holds(self) -> bool:
        """Rank 0: whether this attempt still holds the job directory's lease (one read of lease.json),
        asked before writes outside checkpoints (the metrics record: tracking.Tracker). True without a
        lease and on other ranks."""
        if self.lease is None:
            return True
        try:
            self.lease.check("metrics write")
        except Fenced as error:
            log.error("%s", error.failure.message)
            return False
        return True
