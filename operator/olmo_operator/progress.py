"""What `olmorun local` prints, and the exit code it ends with: pure functions of the run and its files.

print(event_line(event))                  # "- PhaseStarted: ..." / "! KindNotImplemented: ..."
for line in progress_lines(run, seen): print(line)      # one line per job whose step advanced
code = finish(run, workdir, out)          # the verdict; 0 succeeded, 1 failed, 4 blocked (3 suspended:
local.py)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TextIO

from olmo_operator import layout
from olmo_operator.actions import Emit
from olmo_operator.api import OlmoRun, OlmoRunStatus, PhaseSpec
from olmo_operator.archive import access_error
from olmo_operator.plan import INVALID_REASON, condition
from olmo_operator.reconcile import last_metrics, spec_storage_options
from olmo_trainer.config import format_tokens
from olmo_trainer.layout import total_steps

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


def _total_steps(phase: PhaseSpec) -> int | None:
    """The phase's optimizer steps (the trainer's own arithmetic), None when it has no step budget."""
    per_step = (
        phase.batch.global_batch_size * phase.data.sequence_length if phase.batch and phase.data else None
    )
    if phase.max_steps is None and (phase.max_tokens is None or per_step is None):
        return None
    return total_steps(max_steps=phase.max_steps, max_tokens=phase.max_tokens, tokens_per_step=per_step or 0)


def _eta(phase: PhaseSpec, step: int, tokens_per_s: float | None) -> str:
    total = _total_steps(phase)
    if total is None or not tokens_per_s or phase.batch is None or phase.data is None:
        return "?"
    seconds = max(total - step, 0) * phase.batch.global_batch_size * phase.data.sequence_length / tokens_per_s
    return str(dt.timedelta(seconds=round(seconds)))


def progress_lines(run: OlmoRun, last: dict[str, int]) -> list[str]:
    """One line per running job whose step advanced since the last call (`last` is updated)."""
    lines = []
    options = spec_storage_options(
        run
    )  # where the jobs write: the spec's endpoint, not only the environment's
    for phase in run.spec.phases:
        if phase.kind == "soup":
            continue  # averaging has no steps to follow; its events say when it is done
        ps = run.status.phases.get(phase.name)
        for job in ps.jobs if ps else []:
            if job.state != "Running":
                continue
            save = layout.save_dir(run, phase, job.seed)
            try:
                metrics = last_metrics(save, options)
            except Exception as error:  # storage down between the step and this line: the step says so
                if access_error(save, error) is None:
                    raise
                continue
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


def event_line(event: Emit) -> str:
    mark = "!" if event.type == "Warning" else "-"
    return f"{mark} {event.reason}: {event.message}"


def exit_code(status: OlmoRunStatus) -> int:
    """0 succeeded, 2 invalid spec, 4 stopped at a kind not implemented (all before it succeeded), else 1."""
    invalid = condition(status, "Invalid")
    if invalid is not None and (invalid.status, invalid.reason) == ("True", INVALID_REASON):
        return EXIT_INVALID
    succeeded = condition(status, "Succeeded")
    if succeeded is not None and succeeded.status == "True":
        return EXIT_SUCCEEDED
    if succeeded is not None and succeeded.reason == "KindNotImplemented":
        return EXIT_BLOCKED
    return EXIT_FAILED


def finish(name: str, status: OlmoRunStatus, workdir: Path, out: TextIO) -> int:
    """Print the run's verdict; returns the exit code of `olmorun local`."""
    code = exit_code(status)
    succeeded = condition(status, "Succeeded")
    message = succeeded.message if succeeded else ""
    if code == EXIT_INVALID:
        invalid = condition(status, "Invalid")
        print(
            f"run {name} INVALID: {invalid.message if invalid else ''}\n  fix the spec and run the same "
            "command again",
            file=out,
            flush=True,
        )
        return code
    if code == EXIT_SUCCEEDED:
        print(f"run {name} succeeded: {message}", file=out, flush=True)
    elif code == EXIT_BLOCKED:
        done = [n for n, p in status.phases.items() if p.state == "Succeeded"]
        print(f"run {name} BLOCKED: {message}", file=out, flush=True)
        print(f"  succeeded: {', '.join(done) or 'none'}; exit code {EXIT_BLOCKED}", file=out, flush=True)
    else:
        print(f"run {name} FAILED: {message}\n  logs: {workdir / 'logs'}", file=out, flush=True)
    return code
