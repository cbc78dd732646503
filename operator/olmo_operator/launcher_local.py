"""LocalLauncher: a JobRequest -> processes on this host through torchx's local_cwd scheduler.

    launcher = LocalLauncher(log_dir=".olmorun/run/logs")
    launcher.submit(request); launcher.describe(request.name); launcher.cancel(request.name)
    launcher.close()                                # Ctrl-C of the embedded runner: stop every job
    launcher.processes()                            # job -> its live processes (for the state file)
    launcher.adopt(name, records)                   # a restarted runner keeps waiting on a live job

The embedded runner's launcher (`olmorun local`). A job's `nodes x procsPerNode` processes run as one
torchrun on this host (gloo on CPU), rendezvous on a free local port. torchx's local scheduler does
not report a process's exit code, which tells a preempted job (143) from a broken one, so each job's
shell records its own exit status in `<log_dir>/<job>.exit` (an EXIT trap) and describe reads it.

The runner may die (SIGKILL, a closed terminal) while its jobs run on: their processes live in sessions
of their own. `processes()` finds every live process of each job by its exit-file variable
(local_procs.py) for the runner's state file; a restarted runner `adopt`s the jobs its status still
waits on (describe then follows the processes and their exit file, cancel signals them) and stops the
others (local_procs.terminate) before anything is resubmitted, so one job never runs twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torchx.schedulers.local_scheduler import LocalScheduler, create_scheduler
from torchx.specs import AppDef

from olmo_operator import local_procs
from olmo_operator.actions import JobObservation, ObservedState
from olmo_operator.launcher import escape, trainer_role
from olmo_operator.local_procs import ProcessRecord
from olmo_operator.request import JobRequest
from olmo_trainer.layout import EXIT_PREEMPTED

LOCAL_ENDPOINT = "localhost:0"
"""Port 0: torchrun picks a free port, so jobs running side by side never collide."""
EXIT_FILE_ENV = "OLMORUN_EXIT_FILE"
LOG_TAIL_BYTES = 64 * 1024
"""How much of the end of a failed job's stderr is searched for the error that ended it."""
_ERROR_LINE = re.compile(
    r"^(?:\[[^\]]*\]:?\s*)*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)\b.*)$"
)
_WRAPPERS = ("ChildFailedError",)
"""Errors that only say a worker failed (torchrun's own): the worker's error is the reason."""
CANCEL_GRACE_SECONDS = 30.0
"""How long a cancelled job's processes get to save and exit after SIGTERM before they are killed."""
_STATES: dict[str, ObservedState] = {
    "SUBMITTED": "Pending",
    "PENDING": "Pending",
    "RUNNING": "Running",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "CANCELLED": "Missing",
    "UNKNOWN": "Missing",
}


def app_def(request: JobRequest, exit_file: str) -> AppDef:
    """One replica running every process of the job on this host (pure)."""
    placement = request.placement
    role = trainer_role(
        request,
        nnodes=1,
        nproc=placement.nodes * placement.procs_per_node,
        rdzv_endpoint=LOCAL_ENDPOINT,
        prefix=escape(f"trap 'echo $? > \"${EXIT_FILE_ENV}\"' EXIT; "),
    )
    # torchrun and python of this interpreter's environment, whatever PATH the user has.
    role.env["PATH"] = escape(os.path.dirname(sys.executable))
    role.env[EXIT_FILE_ENV] = escape(exit_file)
    return AppDef(name=request.name, roles=[role])


def failure_reason(log_dir: Path) -> str | None:
    """The error that ended a failed job, from the end of its processes' stderr: the last Python
    exception line that is not torchrun's own wrapper (`OSError: [Errno 28] No space left on device`
    for a save that found the disk full). None when there is none (killed, or no log)."""
    found: str | None = None
    for path in sorted(log_dir.rglob("stderr*")) if log_dir.is_dir() else []:
        try:
            with path.open("rb") as stream:
                stream.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                text = stream.read().decode(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _ERROR_LINE.match(line.strip())
            if match and not any(wrapper in match.group(1) for wrapper in _WRAPPERS):
                found = match.group(1)[:300]
    return found


class LocalLauncher:
    """Runs, describes and stops jobs as local processes; remembers them for its lifetime."""

    def __init__(self, *, log_dir: str | None = None) -> None:
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="olmorun-local-")
        self._torchx: LocalScheduler | None = None
        self._ids: dict[str, str] = {}
        self._finished: dict[str, JobObservation] = {}
        self._adopted: dict[str, list[ProcessRecord]] = {}
        """Jobs an earlier runner started and this one re-attached to: their processes."""
        self._stopping: dict[str, float] = {}
        """Cancelled jobs whose processes may still run -> when they get SIGKILL (time.monotonic)."""
        self.cancel_grace = CANCEL_GRACE_SECONDS

    def _scheduler(self) -> LocalScheduler:
        if self._torchx is None:
            self._torchx = create_scheduler("olmorun", cache_size=1000)
        return self._torchx

    def _exit_file(self, job_name: str) -> Path:
        return Path(self.log_dir) / f"{job_name}.exit"

    def submit(self, request: JobRequest) -> str:
        """Start the job's processes; a name already started is a no-op (like a 409 on Kubernetes)."""
        if request.name in self._ids:
            return self._ids[request.name]
        if request.name in self._adopted:
            return request.name  # re-attached: it runs already
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        self._exit_file(request.name).unlink(missing_ok=True)
        scheduler = self._scheduler()
        cfg: dict[str, Any] = {"log_dir": self.log_dir}
        app_id: str = scheduler.schedule(
            scheduler.submit_dryrun(app_def(request, str(self._exit_file(request.name))), cfg)
        )
        self._ids[request.name] = app_id
        return app_id

    def adopt(self, job_name: str, records: list[ProcessRecord]) -> None:
        """Re-attach to a job an earlier runner started: it reads Running while any of `records` lives,
        then as its exit file says (Missing without one: killed before its shell could write it)."""
        self._adopted[job_name] = list(records)
        self._finished.pop(job_name, None)

    def find(self, job_names: list[str]) -> dict[str, list[ProcessRecord]]:
        """The live processes of these jobs of this log_dir, whoever started them (local_procs)."""
        markers = {name: str(self._exit_file(name)) for name in job_names}
        return local_procs.find_processes(markers, EXIT_FILE_ENV)

    def has_exit_status(self, job_name: str) -> bool:
        return self._exit_code(job_name) is not None

    def processes(self) -> dict[str, list[ProcessRecord]]:
        """Every live process of each job this launcher started or adopted, by job name (a cancelled
        job's until they are gone). Kills the processes of jobs cancelled longer than the grace ago."""
        self.reap()
        names = [n for n in [*self._ids, *self._adopted] if n not in self._finished or n in self._stopping]
        return self.find(names)

    def reap(self) -> None:
        """SIGKILL what is left of every job cancelled more than `cancel_grace` seconds ago; forget the
        cancelled jobs whose processes are all gone. Processes are found by the job's marker, not by
        torchx's app state: a torchrun agent whose app torchx calls finished is still found."""
        if not self._stopping:
            return
        found = self.find(list(self._stopping))
        now = time.monotonic()
        for name, deadline in list(self._stopping.items()):
            live = found.get(name, [])
            if not live:
                del self._stopping[name]
            elif now >= deadline:
                local_procs.signal_groups(live, signal.SIGKILL)
                for record in live:  # a process that left its group still goes
                    if local_procs.alive(record):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(record.pid, signal.SIGKILL)

    def _describe_adopted(self, job_name: str) -> JobObservation:
        records = self._adopted[job_name]
        if any(local_procs.alive(r) for r in records):
            return JobObservation(job_name, "Running")
        exit_code = self._exit_code(job_name)
        if exit_code == 0:
            observation = JobObservation(job_name, "Succeeded")
        elif exit_code is None:
            observation = JobObservation(
                job_name, "Missing", message="its processes ended without an exit status"
            )
        else:
            observation = JobObservation(
                job_name,
                "Failed",
                exit_code=exit_code,
                preempted=exit_code == EXIT_PREEMPTED,
                message=f"exit code {exit_code}; logs: {self.log_dir}",
            )
        self._finished[job_name] = observation
        return observation

    def describe(self, job_name: str) -> JobObservation:
        """The job's state (Missing when this launcher did not start or adopt it); no checkpoint or
        metrics."""
        self.reap()
        if job_name in self._finished:
            return self._finished[job_name]
        if job_name in self._adopted:
            return self._describe_adopted(job_name)
        app_id = self._ids.get(job_name)
        response = self._scheduler().describe(app_id) if app_id else None
        if response is None:
            return JobObservation(job_name, "Missing")
        state = _STATES.get(response.state.name, "Missing")
        exit_code = self._exit_code(job_name) if state == "Failed" else None
        message = ""
        if state == "Failed":
            reason = failure_reason(Path(str(response.ui_url).removeprefix("file://")))
            message = f"exit code {exit_code}{f': {reason}' if reason else ''}; logs: {response.ui_url}"
        observation = JobObservation(
            job_name, state, exit_code=exit_code, preempted=exit_code == EXIT_PREEMPTED, message=message
        )
        if state in ("Succeeded", "Failed", "Missing"):
            self._finished[job_name] = observation  # torchx closes a finished app once; remember it
        return observation

    def _exit_code(self, job_name: str) -> int | None:
        try:
            return int(self._exit_file(job_name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None  # killed before its shell could record anything (SIGKILL)

    def cancel(self, job_name: str) -> None:
        """Stop a job: every process carrying its marker gets SIGTERM (they may checkpoint), in every
        session (torchrun's workers have sessions of their own), and SIGKILL once `cancel_grace` has
        passed (`reap`, at the next `processes()` or `describe()`); it then reads as Missing. Found by
        the marker, so a job that torchx already reports finished is stopped too (a hung torchrun agent
        survived its cancelled app for 21 minutes when torchx's state was trusted)."""
        app_id = self._ids.get(job_name)
        if not app_id and job_name not in self._adopted:
            return
        if app_id and job_name not in self._finished:
            self._scheduler().cancel(app_id)
        live = self.find([job_name]).get(job_name, [])
        if live:
            local_procs.signal_groups(live, signal.SIGTERM)
            self._stopping.setdefault(job_name, time.monotonic() + self.cancel_grace)
        self._finished.setdefault(job_name, JobObservation(job_name, "Missing", message="cancelled"))

    def wait_cancelled(self, *, poll: float = 0.2, kill_wait: float = 10.0) -> None:
        """Return once every cancelled job's processes are gone: those still running when their grace
        ends are killed (`reap`). Only a process stuck in the kernel outlives the SIGKILL's `kill_wait`."""
        give_up = time.monotonic() + self.cancel_grace + kill_wait
        while self._stopping and time.monotonic() < give_up:
            self.reap()
            time.sleep(poll)
        self.reap()

    def close(self) -> None:
        """Stop every job this launcher started or adopted (the embedded runner's Ctrl-C)."""
        for name in [*self._ids, *self._adopted]:
            self.cancel(name)
