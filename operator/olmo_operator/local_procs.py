"""The live processes of a local job, found and told apart through Linux's /proc: what `olmorun local`
records in its state file, so that a restarted runner re-attaches to its jobs or stops them.

    found = find_processes({"job-a1": marker}, MARKER_ENV)   # job -> every live process carrying its marker
    alive(record)                                            # still that very process (not a reused pid)
    terminate(records, grace=30.0)                           # SIGTERM its process groups, SIGKILL what is
    left

A job's processes are not one process group: torchx starts the job's shell in a session of its own
(its pgid is its pid) and torchrun runs in that group, but torchrun starts every worker in yet another
session (torch.distributed.elastic's SubprocessHandler: start_new_session). Each process is therefore
recorded by pid, pgid, start time (field 22 of /proc/<pid>/stat: clock ticks since boot) and the boot
id; a pid is taken for ours only when all of them match, so a reused pid is never signalled.
Processes are found by the job's marker in their environment (the launcher's exit-file variable,
unique per workdir and job, inherited by every process of the job), which needs nothing from
torchx's or torchrun's internals. Without /proc (not Linux) nothing is found and nothing is recorded:
the runner then behaves as before this module (a lost runner's jobs are resubmitted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessRecord:
    """One process of a job, as the state file records it."""

    pid: int
    pgid: int
    start: int
    """Start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    boot: str
    """/proc/sys/kernel/random/boot_id: start times restart at every boot."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord | None:
        try:
            return cls(int(data["pid"]), int(data["pgid"]), int(data["start"]), str(data["boot"]))
        except (KeyError, TypeError, ValueError):
            return None


def parse_stat(text: str) -> tuple[str, int, int] | None:
    """(state, pgid, start ticks) from the text of /proc/<pid>/stat, or None when it is not one.

    The command name (field 2) is in parentheses and may hold spaces or ')': fields are counted from
    the last ')' (proc(5)).
    """
    _, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    try:
        # After ')': state(3) ppid(4) pgrp(5) ... starttime(22) -> indexes 0, 1, 2, ..., 19.
        return fields[0], int(fields[2]), int(fields[19])
    except ValueError:
        return None


def boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int, int] | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except OSError:
        return None


def record_of(pid: int) -> ProcessRecord | None:
    """The record of a live (non-zombie) process, or None."""
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return ProcessRecord(pid, stat[1], stat[2], boot_id())


def alive(record: ProcessRecord) -> bool:
    """True when `record`'s process still runs: same pid, start time and boot, and not a zombie."""
    now = record_of(record.pid)
    return now is not None and (now.start, now.boot) == (record.start, record.boot)


def find_processes(markers: Mapping[str, str], variable: str) -> dict[str, list[ProcessRecord]]:
    """Live processes whose environment sets `variable` to one of `markers`' values, by marker key.

    Processes of other users (unreadable environment) and processes that end meanwhile are skipped.
    """
    wanted = {f"{variable}={value}".encode(): key for key, value in markers.items()}
    found: dict[str, list[ProcessRecord]] = {}
    if not wanted:
        return found
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            key = wanted.get(item)
            if key is not None:
                record = record_of(int(entry.name))
                if record is not None:
                    found.setdefault(key, []).append(record)
                break
    for records in found.values():
        records.sort(key=lambda r: (r.start, r.pid))  # the job's shell first
    return found


def signal_groups(records: Iterable[ProcessRecord], signum: int) -> None:
    """Send `signum` to the process group of every live record (each group once)."""
    groups = {r.pgid for r in records if alive(r)}
    for pgid in sorted(groups):
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def _wait_gone(records: list[ProcessRecord], seconds: float, poll: float) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(r) for r in records) and time.monotonic() < deadline:
        time.sleep(poll)


def terminate(
    records: list[ProcessRecord], *, grace: float = 30.0, poll: float = 0.1, kill_wait: float = 10.0
) -> list[ProcessRecord]:
    """SIGTERM every live record's process group (a trainer saves a checkpoint and exits 143), wait up
    to `grace` seconds, then SIGKILL whatever is left and wait up to `kill_wait` seconds for it to be
    gone. Returns the records that were alive at first.

    The wait after SIGKILL matters: the kernel delivers it asynchronously, and a caller that submits the
    job's next attempt as soon as this returns must not find the old one still running (a process that
    ignores SIGTERM, as every child of a shell that ignored it does, always takes this path). Only a
    process stuck in uninterruptible sleep outlives `kill_wait`; the checkpoint lease fences it then.
    """
    live = [r for r in records if alive(r)]
    signal_groups(live, signal.SIGTERM)
    _wait_gone(live, grace, poll)
    left = [r for r in live if alive(r)]
    signal_groups(left, signal.SIGKILL)
    for record in left:  # a process that left its group still goes
        if alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
    _wait_gone(left, kill_wait, poll)
    return live
