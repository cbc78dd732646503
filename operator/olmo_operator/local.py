"""The embedded runner: `olmorun local run.yaml` drives the operator's own reconcile loop on one machine.

    result = run_local(run, workdir=Path(".olmorun/olmo2-tiny"))     # blocks until the run is done

The same `reconcile` (observe -> plan -> apply) as the kopf operator, with two substitutions:
- the status lives in `<workdir>/state.json` (written after every step) instead of the API server;
- jobs run through torchx's `local_cwd` scheduler instead of Volcano: every job is torchrun on this
  host with `nodes x procsPerNode` processes (gloo on CPU), logs under `<workdir>/logs/`.

Storage. A local run keeps its files under the workdir: `spec.storage` (and `scratchUri`) become
`file://<workdir>/storage`, whatever the spec says, so a demo never writes to a shared path or a
bucket by accident. `--storage spec` keeps the spec's URIs (s3:// and gs:// then use credentials from
the environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_ENDPOINT_URL], GOOGLE_APPLICATION_CREDENTIALS),
and `--storage URI` puts the run anywhere else.

Ctrl-C cancels the jobs (they receive SIGTERM) and keeps the state file; running the same command
again resumes: the planner resubmits the lost jobs, which continue from their newest checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from olmo_operator import layout
from olmo_operator.api import OlmoRun, OlmoRunStatus, PhaseSpec
from olmo_operator.plan import CancelJob, Emit, condition, invalid_status
from olmo_operator.reconcile import last_metrics, reconcile_plan, spec_fault
from olmo_trainer.config import format_tokens, hash_json
from olmo_trainer.manifest import path_to_uri

STATE_FILE = "state.json"
POLL_SECONDS = 1.5
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_BLOCKED = 4
"""The run stopped at a phase whose kind this release does not implement (all it could run succeeded)."""
EXIT_INVALID = 2
"""The spec cannot become jobs (the same code as any other user error of the CLI)."""
EXIT_SUSPENDED = 3
"""The spec says `suspend: true`: its jobs (if any were running) are stopped and nothing runs."""
SUSPENDED_MESSAGE = (
    "run {name} is SUSPENDED (spec.suspend: true): no job runs. To continue, set `suspend: false` in the "
    "spec (or remove it) and run the same `olmorun local` command again (workdir {workdir}); jobs resume "
    "from their newest committed checkpoints."
)


def default_workdir(run: OlmoRun) -> Path:
    return Path(".olmorun") / run.name


def localize(run: OlmoRun, workdir: Path, storage: str | None = None) -> OlmoRun:
    """The run as `olmorun local` executes it: storage under the workdir unless told otherwise.

    storage: None -> `file://<workdir>/storage`; "spec" -> the spec's own URIs; anything else -> that URI.
    """
    if storage == "spec":
        return run
    uri = storage or path_to_uri(workdir.resolve() / "storage")
    store = run.spec.storage.model_copy(update={"uri": uri, "scratch_uri": None})
    return run.model_copy(update={"spec": run.spec.model_copy(update={"storage": store})})


# ---------------------------------------------------------------------------------------------
# State file: the local stand-in for the API server
# ---------------------------------------------------------------------------------------------


@dataclass
class State:
    """What `<workdir>/state.json` holds: the spec as given, its generation, and the status."""

    document: dict[str, Any]
    status: OlmoRunStatus
    generation: int
    spec_hash: str
    created_at: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "document": self.document,
                "generation": self.generation,
                "specHash": self.spec_hash,
                "createdAt": self.created_at,
                "status": self.status.model_dump(mode="json", by_alias=True, exclude_none=True),
            },
            indent=2,
        )


def read_state(workdir: Path) -> State | None:
    path = workdir / STATE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return State(
        document=data["document"],
        status=OlmoRunStatus.model_validate(data.get("status") or {}),
        generation=int(data.get("generation", 1)),
        spec_hash=data.get("specHash", ""),
        created_at=data.get("createdAt", ""),
    )


def write_state(workdir: Path, state: State) -> None:
    """Atomic replace: an interrupted write never leaves a half state file behind."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"{STATE_FILE}.tmp"
    tmp.write_text(state.to_json())
    tmp.replace(workdir / STATE_FILE)


def start_state(run: OlmoRun, document: dict[str, Any], workdir: Path, now: dt.datetime) -> State:
    """Resume the state of an earlier invocation (same run name), bumping the generation on a spec edit."""
    spec_hash = hash_json(run.spec.model_dump(mode="json", by_alias=True))
    old = read_state(workdir)
    stamp = now.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if old is None or old.document.get("metadata", {}).get("name") != run.name:
        return State(document, OlmoRunStatus(), 1, spec_hash, stamp)
    generation = old.generation + (old.spec_hash != spec_hash)
    return State(document, old.status, generation, spec_hash, old.created_at or stamp)


# ---------------------------------------------------------------------------------------------
# Progress lines
# ---------------------------------------------------------------------------------------------


def _total_steps(phase: PhaseSpec) -> int | None:
    if phase.max_steps is not None:
        return phase.max_steps
    if phase.max_tokens is None or phase.batch is None or phase.data is None:
        return None
    return -(-phase.max_tokens // (phase.batch.global_batch_size * phase.data.sequence_length))


def _eta(phase: PhaseSpec, step: int, tokens_per_s: float | None) -> str:
    total = _total_steps(phase)
    if total is None or not tokens_per_s or phase.batch is None or phase.data is None:
        return "?"
    seconds = max(total - step, 0) * phase.batch.global_batch_size * phase.data.sequence_length / tokens_per_s
    return str(dt.timedelta(seconds=round(seconds)))


def progress_lines(run: OlmoRun, last: dict[str, int]) -> list[str]:
    """One line per running job whose step advanced since the last call (`last` is updated)."""
    lines = []
    for phase in run.spec.phases:
        if phase.kind == "soup":
            continue  # averaging has no steps to follow; its events say when it is done
        ps = run.status.phases.get(phase.name)
        for job in ps.jobs if ps else []:
            if job.state != "Running":
                continue
            metrics = last_metrics(layout.metrics_uri(layout.save_dir(run, phase, job.seed)))
            if metrics is None or last.get(job.name) == metrics.step:
                continue
            last[job.name] = metrics.step
            total = _total_steps(phase)
            loss = f"{metrics.loss:.4f}" if metrics.loss is not None else "-"
            speed = f"{metrics.tokens_per_s:,.0f}" if metrics.tokens_per_s else "-"
            tokens = format_tokens(metrics.tokens) if metrics.tokens is not None else "-"
            lines.append(
                f"  {layout.job_key(phase, job.seed):<16} step {metrics.step}/{total or '?'}  loss {loss}  "
                f"tokens {tokens}  tok/s {speed}  ETA {_eta(phase, metrics.step, metrics.tokens_per_s)}"
            )
    return lines


def _event_line(event: Emit) -> str:
    mark = "!" if event.type == "Warning" else "-"
    return f"{mark} {event.reason}: {event.message}"


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def exit_code(status: OlmoRunStatus) -> int:
    succeeded = condition(status, "Succeeded")
    if succeeded is not None and succeeded.status == "True":
        return EXIT_SUCCEEDED
    if succeeded is not None and succeeded.reason == "KindNotImplemented":
        return EXIT_BLOCKED
    return EXIT_FAILED


def run_local(
    run: OlmoRun,
    *,
    workdir: Path,
    document: dict[str, Any] | None = None,
    poll_seconds: float = POLL_SECONDS,
    out: TextIO = sys.stdout,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> int:
    """Run (or resume) `run` to the end on this machine; returns the process exit code.

    `run` is already localized (see localize); `document` is the spec as the user wrote it (state file).
    """
    from torchx.schedulers.local_scheduler import SignalException

    from olmo_operator.launcher import Launcher  # torchx: only the runner needs it

    workdir.mkdir(parents=True, exist_ok=True)
    state = start_state(run, document or run.model_dump(mode="json", by_alias=True), workdir, clock())
    run.metadata.generation = state.generation
    run = run.model_copy(update={"status": state.status})
    launcher = Launcher("local_cwd", namespace=run.namespace, log_dir=str(workdir.resolve() / "logs"))
    print(f"olmorun local: {run.name} in {workdir} (storage {layout.run_root(run)})", file=out, flush=True)
    seen: dict[str, int] = {}
    try:
        while True:
            result = reconcile_plan(run, launcher=launcher, now=clock())
            run = run.model_copy(update={"status": result.status})
            state.status = result.status
            write_state(workdir, state)
            for line in [_event_line(e) for e in result.events] + progress_lines(run, seen):
                print(line, file=out, flush=True)
            if result.finished:
                break
            if run.spec.suspend and not any(isinstance(a, CancelJob) for a in result.actions):
                # Nothing runs and nothing is left to stop: waiting would wait for an edit forever.
                launcher.close()
                print(SUSPENDED_MESSAGE.format(name=run.name, workdir=workdir), file=out, flush=True)
                return EXIT_SUSPENDED
            time.sleep(poll_seconds)
    except (KeyboardInterrupt, SignalException):
        # Ctrl-C: torchx's local scheduler turns SIGINT/SIGTERM into its SignalException.
        launcher.close()
        write_state(workdir, state)
        print(
            f"interrupted: jobs stopped; run the same command again to resume ({workdir})",
            file=out,
            flush=True,
        )
        return EXIT_INTERRUPTED
    except Exception as error:
        launcher.close()  # never leave training processes behind a crashed runner
        fault = spec_fault(error)
        if fault is None:
            write_state(workdir, state)
            raise
        # The spec's fault, found on its way to a job: the same Invalid status as the operator's.
        state.status = invalid_status(state.status, fault, clock(), run.metadata.generation)
        write_state(workdir, state)
        print(f"run {run.name} INVALID: {fault}\n  fix the spec and run the same command again", file=out, flush=True)
        return EXIT_INVALID
    return _finish(run, workdir, out)


def _finish(run: OlmoRun, workdir: Path, out: TextIO) -> int:
    code = exit_code(run.status)
    succeeded = condition(run.status, "Succeeded")
    message = succeeded.message if succeeded else ""
    if code == EXIT_SUCCEEDED:
        print(f"run {run.name} succeeded: {message}", file=out, flush=True)
    elif code == EXIT_BLOCKED:
        done = [n for n, p in run.status.phases.items() if p.state == "Succeeded"]
        print(f"run {run.name} BLOCKED: {message}", file=out, flush=True)
        print(f"  succeeded: {', '.join(done) or 'none'}; exit code {EXIT_BLOCKED}", file=out, flush=True)
    else:
        print(f"run {run.name} FAILED: {message}\n  logs: {workdir / 'logs'}", file=out, flush=True)
    return code
