"""LocalLauncher: a JobRequest -> processes on this host through torchx's local_cwd scheduler.

    launcher = LocalLauncher(log_dir=".olmorun/run/logs")
    launcher.submit(request); launcher.describe(request.name); launcher.cancel(request.name)
    launcher.close()                                # Ctrl-C of the embedded runner: stop every job

The embedded runner's launcher (`olmorun local`). A job's `nodes x procsPerNode` processes run as one
torchrun on this host (gloo on CPU), rendezvous on a free local port. torchx's local scheduler does
not report a process's exit code, which tells a preempted job (143) from a broken one, so each job's
shell records its own exit status in `<log_dir>/<job>.exit` (an EXIT trap) and describe reads it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from torchx.schedulers.local_scheduler import LocalScheduler, create_scheduler
from torchx.specs import AppDef

from olmo_operator.actions import JobObservation, ObservedState
from olmo_operator.launcher import escape, trainer_role
from olmo_operator.request import JobRequest
from olmo_trainer.layout import EXIT_PREEMPTED

LOCAL_ENDPOINT = "localhost:0"
"""Port 0: torchrun picks a free port, so jobs running side by side never collide."""
EXIT_FILE_ENV = "OLMORUN_EXIT_FILE"
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


class LocalLauncher:
    """Runs, describes and stops jobs as local processes; remembers them for its lifetime."""

    def __init__(self, *, log_dir: str | None = None) -> None:
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="olmorun-local-")
        self._torchx: LocalScheduler | None = None
        self._ids: dict[str, str] = {}
        self._finished: dict[str, JobObservation] = {}

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
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        self._exit_file(request.name).unlink(missing_ok=True)
        scheduler = self._scheduler()
        cfg: dict[str, Any] = {"log_dir": self.log_dir}
        app_id: str = scheduler.schedule(scheduler.submit_dryrun(app_def(request, str(self._exit_file(request.name))), cfg))
        self._ids[request.name] = app_id
        return app_id

    def describe(self, job_name: str) -> JobObservation:
        """The job's state (Missing when this launcher did not start it); no checkpoint or metrics."""
        if job_name in self._finished:
            return self._finished[job_name]
        app_id = self._ids.get(job_name)
        response = self._scheduler().describe(app_id) if app_id else None
        if response is None:
            return JobObservation(job_name, "Missing")
        state = _STATES.get(response.state.name, "Missing")
        exit_code = self._exit_code(job_name) if state == "Failed" else None
        message = f"exit code {exit_code}; logs: {response.ui_url}" if state == "Failed" else ""
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
        """Stop a job (its processes get SIGTERM and may checkpoint); it then reads as Missing."""
        app_id = self._ids.get(job_name)
        if app_id and job_name not in self._finished:
            self._scheduler().cancel(app_id)
            self._finished[job_name] = JobObservation(job_name, "Missing", message="cancelled")

    def close(self) -> None:
        """Stop every job this launcher started (the embedded runner's Ctrl-C)."""
        for name in list(self._ids):
            self.cancel(name)
