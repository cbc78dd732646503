"""Rank-0 decisions every rank shares, and the process-group helpers of checkpointing.

A checkpoint decision (is this step committed? may this attempt delete?) is taken once, by rank 0,
and broadcast with its outcome, so that all ranks take the same branch and none hangs in a later
collective. Without a process group every helper acts as the only rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist

from olmo_trainer.errors import CheckpointError
from olmo_trainer.failure import PermanentFailure
from olmo_trainer.lease import FENCED_REASON, Fenced

__all__ = [
    "barrier",
    "decided_by_rank0",
    "gather_to_rank0",
    "is_distributed",
    "rank",
    "single_process",
    "world_size",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier(group: Any = None) -> None:
    if is_distributed():
        dist.barrier(group=group)


def decided_by_rank0(decide: Callable[[], Any], group: Any = None) -> Any:
    """Rank 0 runs `decide` and every rank gets its result (or its error, raised everywhere as a
    CheckpointError, or as Fenced when the lease refused), so that all ranks take the same branch and
    none hangs in a later collective. Collective over `group` (the default group when None)."""
    outcome: tuple[str, Any] = ("ok", None)
    if rank() == 0:
        try:
            outcome = ("ok", decide())
        except PermanentFailure as error:  # Fenced, UnsafeCheckpoint: the same reason on every rank
            outcome = ("permanent", (error.failure.reason, error.failure.message))
        except Exception as error:
            outcome = ("error", f"{type(error).__name__}: {error}")
    if is_distributed():
        box = [outcome]
        dist.broadcast_object_list(box, src=0, group=group)
        outcome = box[0]
    kind, value = outcome
    if kind == "permanent":
        reason, message = value
        raise Fenced(message) if reason == FENCED_REASON else PermanentFailure(reason, message)
    if kind == "error":
        raise CheckpointError(value)
    return value


def gather_to_rank0(value: Any, group: Any = None) -> list[Any] | None:
    """Every rank's value, in rank order, on rank 0 (None elsewhere)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(value, gathered, dst=0, group=group)
    return gathered


@contextmanager
def single_process() -> Iterator[None]:
    """DCP warns on every call without a process group; for a one-process job that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to .* in a single process.*")
        yield
