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
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from olmo_operator import layout
from olmo_operator.api import OlmoRun
from olmo_operator.local_state import start_state, write_state
from olmo_operator.progress import (
    EXIT_INTERRUPTED,
    EXIT_SUSPENDED,
    SUSPENDED_MESSAGE,
    event_line,
    finish,
    progress_lines,
)
from olmo_operator.reconcile import Reconciler

POLL_SECONDS = 1.5


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
    print(f"olmorun local: {run.name} in {workdir} (storage {layout.run_root(run)})", file=out, flush=True)
    seen: dict[str, int] = {}
    try:
        while True:
            status = state.status.model_dump(mode="json", by_alias=True, exclude_none=True)
            outcome = reconciler.step({**spec, "status": status})
            state.status = outcome.status
            write_state(workdir, state)
            progress = progress_lines(outcome.run, seen) if outcome.run is not None else []
            for line in [event_line(e) for e in outcome.events] + progress:
                print(line, file=out, flush=True)
            if outcome.finished:
                break
            if run.spec.suspend and not outcome.cancelled:
                # Nothing runs and nothing is left to stop: waiting would wait for an edit forever.
                launcher.close()
                print(SUSPENDED_MESSAGE.format(name=run.name, workdir=workdir), file=out, flush=True)
                return EXIT_SUSPENDED
            time.sleep(poll_seconds)
    except (KeyboardInterrupt, SignalException):
        # Ctrl-C: torchx's local scheduler turns SIGINT/SIGTERM into its SignalException.
        launcher.close()
        write_state(workdir, state)
        print(f"interrupted: jobs stopped; run the same command again to resume ({workdir})", file=out, flush=True)
        return EXIT_INTERRUPTED
    except Exception:
        launcher.close()  # never leave training processes behind a crashed runner
        write_state(workdir, state)
        raise
    return finish(run.name, state.status, workdir, out)
