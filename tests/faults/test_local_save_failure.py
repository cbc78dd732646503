"""A disk that fills during a save, under `olmorun local` (issue 26 #5): the attempt is a failed attempt
with its reason, and the runner never crashes.

The full disk is real: /dev/full answers every write with ENOSPC. A job started through torchx's
local scheduler and torchrun (the local runner's own launcher) whose worker writes its "checkpoint"
there fails; the launcher reads it Failed with the worker's own error as the reason (was: only "exit
code 1", and a runner that crashed reported the attempt later as "disappeared"). A state file the
runner cannot write is said, not raised.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

from olmo_operator.api import OlmoRunStatus
from olmo_operator.launcher_local import LocalLauncher, failure_reason
from olmo_operator.local import save_state
from olmo_operator.local_state import STATE_FILE, State
from olmo_operator.request import JobRequest
from tests.operator.test_launcher import request_of, tiny


def test_a_save_onto_a_full_disk_is_a_failed_attempt_with_its_reason(tmp_path: Path) -> None:
    launcher = LocalLauncher(log_dir=str(tmp_path / "logs"))
    script = tmp_path / "save.py"
    script.write_text(
        "with open('/dev/full', 'wb') as checkpoint:\n    checkpoint.write(b'weights' * 1000)\n"
    )
    request = request_of(tiny(), "pretrain", 6198)
    job = JobRequest(**{**request.__dict__, "command": [str(script)]})
    launcher.submit(job)
    deadline = time.monotonic() + 120
    while (observed := launcher.describe(job.name)).state in (
        "Pending",
        "Running",
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert observed.state == "Failed" and observed.exit_code == 1
    assert "OSError: [Errno 28] No space left on device" in observed.message, observed.message
    assert "ChildFailedError" not in observed.message


def test_the_reason_is_the_workers_last_error_not_torchruns_wrapper(tmp_path: Path) -> None:
    log = tmp_path / "app" / "trainer" / "0"
    log.mkdir(parents=True)
    (log / "stderr.log").write_text(
        "[rank0]: Traceback (most recent call last):\n"
        "[rank0]: OSError: [Errno 28] No space left on device\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    )
    assert failure_reason(tmp_path / "app") == "OSError: [Errno 28] No space left on device"
    assert failure_reason(tmp_path / "absent") is None


def test_a_state_file_that_cannot_be_written_is_said_and_the_runner_goes_on(tmp_path: Path) -> None:
    """The state file cannot be replaced (a directory stands at its name: the kernel refuses the rename,
    as it refuses a write on a full disk): `save_state` says so on the runner's output, never raises."""
    (tmp_path / STATE_FILE).mkdir()
    (tmp_path / STATE_FILE / "in-the-way").write_text("x")
    out = io.StringIO()
    state = State({"metadata": {"name": "r"}}, OlmoRunStatus(), 1, "h", "now")
    assert save_state(tmp_path, state, out) is False
    assert "StateNotSaved" in out.getvalue() and "Is a directory" in out.getvalue(), out.getvalue()
    shutil.rmtree(tmp_path / STATE_FILE)
    assert save_state(tmp_path, state, out) is True and (tmp_path / STATE_FILE).is_file()
