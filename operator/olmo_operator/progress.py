"""What `olmorun local` prints, and the exit code it ends with: pure functions of the run and its files.

print(event_line(event))                  # "- PhaseStarted: ..." / "! JobFailed: ..."
display = Display(sys.stdout)             # a bar per running job on a terminal, plain lines otherwise
display.show(run)                         # after every reconcile step
code = finish(run, workdir, out)          # the verdict: 0 succeeded, 1 failed (3 suspended)

Progress. Every running job shows its step of the total (known up front for every kind with a budget:
`maxTokens` / `maxSteps`; an SFT or DPO phase that trains for `epochs` learns its total only from its
data, and the trainer writes it on every metrics line: `total_steps`), loss, learning rate, grad norm,
tokens and throughput, and an ETA from a smoothed step rate (`Rate`: an exponential moving average of the
rate between observations, so one slow or fast step does not swing it). Counts are shown in one format
(`count`: 3 significant digits, k/M/G/T). On a terminal each job is a tqdm bar; elsewhere (CI logs, a
pipe) one plain line per job whose step advanced.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from olmo_operator import layout
from olmo_operator.actions import Emit, MetricsLine
from olmo_operator.api import OlmoRun, OlmoRunStatus, PhaseSpec
from olmo_operator.archive import access_error
from olmo_operator.observe import last_metrics, spec_storage_options
from olmo_operator.plan import INVALID_REASON, condition
from olmo_trainer.layout import budget_steps

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_INVALID = 2
"""The spec cannot become jobs (the same code as any other user error of the CLI)."""
EXIT_SUSPENDED = 3
"""The spec says `suspend: true`: its jobs (if any were running) are stopped and nothing runs."""
SUSPENDED_MESSAGE = (
    "run {name} is SUSPENDED (spec.suspend: true): no job runs. To continue, set `suspend: false` in the "
    "spec (or remove it) and run the same `olmorun local` command again (workdir {workdir}); jobs resume "
    "from their newest committed checkpoints."
)
RATE_SMOOTHING = 0.7
"""Weight of the previous rate in the step rate's moving average (tqdm's default smoothing is 0.3 on
the new value: the same)."""


def _tokens_per_step(phase: PhaseSpec) -> int | None:
    if phase.batch is None or phase.data is None:
        return None
    return phase.batch.global_batch_size * phase.data.sequence_length


def _total_steps(phase: PhaseSpec) -> int | None:
    """The phase's optimizer steps (the trainer's own arithmetic: layout.budget_steps), None when they
    depend on its data (an SFT or DPO phase that trains for `epochs`)."""
    return budget_steps(
        max_steps=phase.max_steps,
        max_tokens=phase.max_tokens,
        global_batch_size=phase.batch.global_batch_size if phase.batch else None,
        sequence_length=phase.data.sequence_length if phase.data else None,
    )


def count(value: float | None) -> str:
    """A count or a rate in one format everywhere: 3 significant digits and a k/M/G/T suffix."""
    if value is None:
        return "-"
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value)}"


@dataclass
class Rate:
    """A job's smoothed step rate: an exponential moving average of the rate between observations."""

    step: int | None = None
    at: float | None = None
    per_s: float | None = None

    def observe(self, step: int, at: float) -> None:
        """A new observation: step `step` seen at `at` (seconds, monotonic). A step back (a resume from
        an older checkpoint) restarts the average."""
        if self.step is not None and step < self.step:
            self.step, self.at, self.per_s = None, None, None
        if self.step is not None and self.at is not None and step > self.step and at > self.at:
            current = (step - self.step) / (at - self.at)
            self.per_s = (
                current
                if self.per_s is None
                else RATE_SMOOTHING * self.per_s + (1 - RATE_SMOOTHING) * current
            )
        if self.step is None or step > self.step:
            self.step, self.at = step, at


@dataclass(frozen=True)
class JobProgress:
    """One running job's progress, as a line or a bar shows it."""

    key: str
    step: int
    total: int | None
    metrics: MetricsLine
    eta_s: float | None

    def fields(self) -> str:
        m = self.metrics
        loss = f"{m.loss:.4f}" if m.loss is not None else "-"
        lr = f"{m.lr:.2e}" if m.lr is not None else "-"
        norm = f"{m.grad_norm:.3g}" if m.grad_norm is not None else "-"
        return f"loss {loss}  lr {lr}  gnorm {norm}  tokens {count(m.tokens)}  tok/s {count(m.tokens_per_s)}"

    def eta(self) -> str:
        return "?" if self.eta_s is None else str(dt.timedelta(seconds=round(self.eta_s)))

    def line(self) -> str:
        return f"  {self.key:<16} step {self.step}/{self.total or '?'}  {self.fields()}  ETA {self.eta()}"


def job_progress(phase: PhaseSpec, key: str, metrics: MetricsLine, rate: Rate) -> JobProgress:
    """The progress of a job from its last metrics and its smoothed rate. Before the rate has two
    observations, the trainer's own throughput gives it (tokens/s over tokens per step)."""
    total = _total_steps(phase) or metrics.total_steps
    per_s = rate.per_s
    per_step = _tokens_per_step(phase)
    if per_s is None and metrics.tokens_per_s and per_step:
        per_s = metrics.tokens_per_s / per_step
    eta = max(total - metrics.step, 0) / per_s if total is not None and per_s else None
    return JobProgress(key, metrics.step, total, metrics, eta)


@dataclass
class Tracker:
    """Every running job's rate across reconcile steps; `clock` is seconds (monotonic)."""

    clock: Callable[[], float] = time.monotonic
    rates: dict[str, Rate] = field(default_factory=dict)

    def progress(self, run: OlmoRun) -> list[JobProgress]:
        """The progress of every running job of the run (a job whose storage cannot be read is left out:
        the step's StorageUnavailable condition says why)."""
        out = []
        options = spec_storage_options(run)  # where the jobs write: the spec's endpoint, not only the env's
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
                except Exception as error:
                    if access_error(save, error) is None:
                        raise
                    continue
                if metrics is None:
                    continue
                rate = self.rates.setdefault(job.name, Rate())
                rate.observe(metrics.step, self.clock())
                out.append(job_progress(phase, layout.job_key(phase, job.seed), metrics, rate))
        return out


def progress_lines(run: OlmoRun, last: dict[str, int], tracker: Tracker | None = None) -> list[str]:
    """One plain line per running job whose step advanced since the last call (`last` is updated)."""
    lines = []
    for item in (tracker or Tracker()).progress(run):
        if last.get(item.key) == item.step:
            continue
        last[item.key] = item.step
        lines.append(item.line())
    return lines


class Display:
    """Progress on `out`: a tqdm bar per running job on a terminal, else plain lines (progress_lines)."""

    def __init__(self, out: TextIO, *, terminal: bool | None = None, tracker: Tracker | None = None) -> None:
        self.out = out
        self.terminal = out.isatty() if terminal is None else terminal
        self.tracker = tracker or Tracker()
        self.seen: dict[str, int] = {}
        self.bars: dict[str, Any] = {}

    def print(self, text: str) -> None:
        """A line above the bars (events, the verdict)."""
        if self.terminal and self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def show(self, run: OlmoRun) -> None:
        if not self.terminal:
            for line in progress_lines(run, self.seen, self.tracker):
                print(line, file=self.out, flush=True)
            return
        from tqdm import tqdm

        current = self.tracker.progress(run)
        for item in current:
            bar = self.bars.get(item.key)
            if bar is None:
                shape = (
                    "{desc} {percentage:3.0f}%|{bar}| {n}/{total}{postfix}"
                    if item.total
                    else "{desc} step {n}{postfix}"
                )
                bar = tqdm(
                    total=item.total,
                    initial=item.step,
                    desc=f"{item.key:<12}",
                    file=self.out,
                    position=len(self.bars),
                    leave=True,
                    dynamic_ncols=True,
                    bar_format=shape,
                )
                self.bars[item.key] = bar
            bar.total = item.total
            bar.n = item.step
            bar.set_postfix_str(f"{item.fields()}  ETA {item.eta()}", refresh=True)
        running = {item.key for item in current}
        for key in [k for k in self.bars if k not in running]:
            self.bars.pop(key).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def event_line(event: Emit) -> str:
    mark = "!" if event.type == "Warning" else "-"
    return f"{mark} {event.reason}: {event.message}"


def exit_code(status: OlmoRunStatus) -> int:
    """0 succeeded, 2 invalid spec, else 1."""
    invalid = condition(status, "Invalid")
    if invalid is not None and (invalid.status, invalid.reason) == ("True", INVALID_REASON):
        return EXIT_INVALID
    succeeded = condition(status, "Succeeded")
    if succeeded is not None and succeeded.status == "True":
        return EXIT_SUCCEEDED
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
    else:
        print(f"run {name} FAILED: {message}\n  logs: {workdir / 'logs'}", file=out, flush=True)
    return code
