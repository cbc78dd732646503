"""The embedded runner: `olmorun local run.yaml` drives the operator's own reconcile step on one machine.

    code = run_local(localize(run, workdir), workdir=workdir)     # blocks until the run is done

Wiring only. The step is the kopf operator's (reconcile.Reconciler: parse -> storage options ->
observe/plan/apply -> events); what differs is what this runner supplies:
- the status store: `<workdir>/state.json`, written after every step (local_state.py);
- the event sink: lines on stdout, with one progress line per running job (progress.py);
- the launcher: torchx's `local_cwd` instead of Volcano (launcher_local.py): every job is torchrun
  on this host with `nodes x procsPerNode` processes (gloo on CPU), logs under `<workdir>/logs/`.

Storage. A local run keeps its files under the workdir: `spec.storage` (and `scratchUri`) become
`file://<workdir>/storage`, whatever the spec says, so a demo never writes to a shared path or a
bucket by accident. `--storage spec` keeps the spec's URIs (s3:// and gs:// then use credentials from
the environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_ENDPOINT_URL], GOOGLE_APPLICATION_CREDENTIALS,
and the spec's endpointUrl, exactly as the operator does), and `--storage URI` puts the run anywhere else.

Ctrl-C cancels the jobs (they receive SIGTERM) and keeps the state file; running the same command
again resumes: the planner resubmits the lost jobs, which continue from their newest checkpoint.

One trainer per job, even when the runner itself dies (SIGKILL, a closed terminal) and its jobs'
processes run on: the state file records every job's live processes (local_procs.py), and a runner
started later first `recover`s them: it re-attaches to the jobs its status still waits on (no
resubmission; it follows them to their exit status) and stops any other leftover (SIGTERM: they save
and exit; SIGKILL after a grace period) before the planner submits anything. The trainer's lease
(olmo_trainer/lease.py) fences off any writer this could still miss.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from olmo_operator import layout, local_procs
from olmo_operator.api import OlmoRun
from olmo_operator.local_procs import ProcessRecord
from olmo_operator.local_state import STATE_FILE, State, start_state, write_state
from olmo_operator.progress import (
    EXIT_INTERRUPTED,
    EXIT_SUSPENDED,
    SUSPENDED_MESSAGE,
    Display,
    event_line,
    finish,
)
from olmo_operator.reconcile import Reconciler

POLL_SECONDS = 1.5
LEFTOVER_GRACE_SECONDS = 60.0
"""How long a leftover job gets to save and exit after SIGTERM before it is killed."""

if TYPE_CHECKING:
    from olmo_operator.launcher_local import LocalLauncher


def recover(
    launcher: LocalLauncher, state: State, out: TextIO, *, grace: float = LEFTOVER_GRACE_SECONDS
) -> None:
    """Re-attach to the live jobs of an earlier runner that the status still waits on; stop the others.

    A job the status tracks as Pending/Running is adopted when any of its processes lives, or when it
    ended meanwhile with an exit status (then it reads Succeeded/Failed, not "disappeared"). Live
    processes of any other job (an older attempt, a cancelled job) are terminated and waited for.
    """
    active = {
        job.name
        for ps in state.status.phases.values()
        for job in ps.jobs
        if job.state in ("Pending", "Running")
    }
    recorded = {
        name: [r for r in (ProcessRecord.from_json(item) for item in items) if r is not None]
        for name, items in state.processes.items()
    }
    names = sorted(set(recorded) | active)
    found = launcher.find(names)  # also what started after the last state write (torchrun's workers)
    for name in names:
        live = sorted(
            {r for r in recorded.get(name, []) if local_procs.alive(r)} | set(found.get(name, [])),
            key=lambda r: (r.start, r.pid),
        )
        pids = ", ".join(str(r.pid) for r in live)
        if name in active and (live or launcher.has_exit_status(name)):
            launcher.adopt(name, live)
            if live:
                print(f"re-attached to job {name}, still running (pids {pids})", file=out, flush=True)
        elif live:
            print(
                f"stopping {len(live)} leftover process(es) of job {name} (pids {pids})", file=out, flush=True
            )
            local_procs.terminate(live, grace=grace)
    state.processes = {}


def _record_processes(launcher: LocalLauncher, state: State) -> None:
    state.processes = {name: [r.to_json() for r in records] for name, records in launcher.processes().items()}


def save_state(workdir: Path, state: State, out: TextIO) -> bool:
    """Write the state file; a full or failing disk is said on `out`, never raised: the runner goes on
    (its jobs keep running and are followed; a later write succeeds once there is room). True if written."""
    try:
        write_state(workdir, state)
    except OSError as error:
        print(
            f"! StateNotSaved: {workdir / STATE_FILE}: {error.strerror or error}; the run goes on, and a "
            "runner started later finds its jobs only once the file is written again",
            file=out,
            flush=True,
        )
        return False
    return True


def run_local(
    run: OlmoRun,
    *,
    workdir: Path,
    document: dict[str, Any] | None = None,
    poll_seconds: float = POLL_SECONDS,
    out: TextIO = sys.stdout,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> int:
    """Run (or resume) `run` to the end on this machine; returns the process exit code (progress.py).

    `run` is already localized (local_state.localize); `document` is the spec as the user wrote it,
    kept in the state file. Re-raises any unexpected error after stopping every job it started.
    """
    from torchx.schedulers.local_scheduler import SignalException

    from olmo_operator.launcher_local import LocalLauncher  # torchx: only the runner needs it

    workdir.mkdir(parents=True, exist_ok=True)
    state = start_state(run, document or run.model_dump(mode="json", by_alias=True), workdir, clock())
    spec = run.model_dump(mode="json", by_alias=True, exclude={"status"})
    spec["metadata"]["generation"] = state.generation
    launcher = LocalLauncher(log_dir=str(workdir.resolve() / "logs"))
    reconciler = Reconciler(lambda _namespace: launcher, clock=clock)
    recover(launcher, state, out)  # before any planning: a live job is never submitted twice
    print(f"olmorun local: {run.name} in {workdir} (storage {layout.run_root(run)})", file=out, flush=True)
    display = Display(out)  # bars on a terminal, plain lines in a log
    try:
        while True:
            status = state.status.model_dump(mode="json", by_alias=True, exclude_none=True)
            outcome = reconciler.step({**spec, "status": status})
            state.status = outcome.status
            _record_processes(launcher, state)
            save_state(workdir, state, out)
            for event in outcome.events:
                display.print(event_line(event))
            if outcome.run is not None:
                display.show(outcome.run)
            if outcome.finished:
                display.close()
                launcher.wait_cancelled()  # a cancelled job's processes never outlive the run
                break
            if run.spec.suspend and not outcome.cancelled:
                # Nothing runs and nothing is left to stop: waiting would wait for an edit forever.
                display.close()
                launcher.close()
                launcher.wait_cancelled()  # suspended means stopped: saved and gone, or killed
                print(SUSPENDED_MESSAGE.format(name=run.name, workdir=workdir), file=out, flush=True)
                return EXIT_SUSPENDED
            time.sleep(poll_seconds)
    except (KeyboardInterrupt, SignalException):
        # Ctrl-C: torchx's local scheduler turns SIGINT/SIGTERM into its SignalException.
        display.close()
        launcher.close()
        _record_processes(launcher, state)  # still saving after SIGTERM: the next runner finds them
        save_state(workdir, state, out)
        print(
            f"interrupted: jobs stopped; run the same command again to resume ({workdir})",
            file=out,
            flush=True,
        )
        return EXIT_INTERRUPTED
    except Exception:
        display.close()
        launcher.close()  # never leave training processes behind a crashed runner
        _record_processes(launcher, state)
        save_state(workdir, state, out)
        raise
    return finish(run.name, state.status, workdir, out)
