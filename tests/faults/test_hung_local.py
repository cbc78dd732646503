"""A real job made to hang under `olmorun local`: cancelled after spec.retry.hangTimeoutMinutes, counted
as a failure (Hung) and resumed from its checkpoint by the next attempt.

The hang is real: the trainer's worker processes (torchrun's children, running the real trainer) are
frozen with SIGSTOP mid-training, as a deadlocked collective freezes them; torchrun's agent, the shell
and the runner are untouched. Nothing is mocked. The pure decisions, on a fake clock:
tests/faults/test_hung_planner.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_local_run import OLMORUN, ROOT, _wait_for_checkpoint, small_spec, state, storage

pytestmark = pytest.mark.slow
HANG_MINUTES = 0.75
"""Long enough for the job's start-up on a loaded 2-core machine (the clock starts when it runs)."""


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # proc(5): fields after the command name


def trainer_workers(config: str) -> list[int]:
    """The processes torchrun started for the job whose config is `config` (its agent's children)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]

    def runs(pid: int, word: str) -> bool:
        return any(word in arg for arg in _cmdline(pid))

    agents = {
        pid for pid in pids if runs(pid, config) and any(Path(a).name == "torchrun" for a in _cmdline(pid))
    }
    return [pid for pid in pids if _ppid(pid) in agents and runs(pid, "olmo_trainer")]


def test_a_job_frozen_mid_training_is_cancelled_as_hung_and_resumed_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    spec = small_spec(tmp_path, pretrain_steps=12, phases=1, interval=3)
    document = yaml.safe_load(spec.read_text())
    document["spec"]["retry"] = {"backoffLimit": 1, "backoffSeconds": 1, "hangTimeoutMinutes": HANG_MINUTES}
    spec.write_text(yaml.safe_dump(document, sort_keys=False))
    workdir = tmp_path / "wd"
    config = str(storage(workdir) / "phases" / "pretrain" / "config.json")
    command = [*OLMORUN, "local", str(spec), "--workdir", str(workdir), "--poll", "0.5"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    frozen: list[int] = []
    try:
        reached = _wait_for_checkpoint(storage(workdir) / "phases" / "pretrain" / "checkpoints", proc)
        frozen = trainer_workers(config)
        assert len(frozen) == 2, f"expected the job's 2 trainer processes under torchrun, found {frozen}"
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in frozen:  # torchrun's agent SIGKILLs them after its grace period; never leave one behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert time.monotonic() - stopped_at >= HANG_MINUTES * 60, "finished before the hang could be detected"

    hung = [line for line in output.splitlines() if line.startswith("! Hung: job olmo2-tiny-pretrain-a1")]
    assert len(hung) == 1, output
    assert f"no new step in metrics.jsonl for {HANG_MINUTES:g} min" in hung[0] and "retry 1/1" in hung[0]
    job = state(workdir)["status"]["phases"]["pretrain"]["jobs"][0]
    assert (job["name"], job["attempts"], job["failures"], job["state"]) == (
        "olmo2-tiny-pretrain-a2",
        2,
        1,
        "Succeeded",
    )
    # The second attempt resumed from a committed checkpoint: step 1 ran once, no step went back
    # further than the checkpoint the frozen attempt had reached.
    with (storage(workdir) / "phases" / "pretrain" / "metrics.jsonl").open() as lines:
        steps = [json.loads(line)["step"] for line in lines if line.strip() and "step" in json.loads(line)]
    assert steps.count(1) == 1 and max(steps) == 12, steps
    restarts = [steps[i] for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert all(s > reached for s in restarts), (reached, steps)
