"""Preemption of a 2-process FSDP2 run (tiny preset): SIGTERM must save at the next step boundary and
exit 143, with torchrun and without it. The helpers here serve the resume tests of every kind.

A run killed (SIGKILL, SIGTERM) several times and restarted ending bit-identical to an uninterrupted
one, in every kind: tests/faults/test_trainer_kill.py.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from olmo_operator import local_procs
from olmo_trainer.layout import EXIT_PREEMPTED
from olmo_trainer.manifest import committed_steps, step_dirs
from olmo_trainer.storage import filesystem
from tests.trainer import dist_util
from tests.trainer.dist_util import kill_job, read_metrics, start_torchrun, tiny_config

pytestmark = pytest.mark.slow


def wait_for_step(save_dir: Path, proc: subprocess.Popen[bytes], step: int, timeout: float = 90) -> int:
    """Poll metrics.jsonl until it records `step` (or more); returns the last step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            lines = (save_dir / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        done = [line for line in lines if line.endswith("}")]
        if len(done) >= step:
            return len(done)
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def full_state(checkpoint: Path, scratch: Path) -> dict[str, Any]:
    """Every tensor of a DCP checkpoint (model and optimizer), consolidated in this process."""
    target = scratch / f"{checkpoint.parent.parent.parent.name}-{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(target))
    state: dict[str, Any] = torch.load(target, weights_only=False)
    return state


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def test_kill_job_leaves_no_worker_training(tmp_path: Path) -> None:
    """The kill the SIGKILL tests use is a whole job's: torchrun's workers live in sessions of their
    own, so killing torchrun's process group alone would leave them training beside the restart."""
    config = tiny_config(tmp_path, maxSteps=5000, checkpoint={"intervalSteps": 1000})
    save_dir = tmp_path / "out"
    proc = start_torchrun(["pretrain", "--config", str(config)], log=tmp_path / "run.log")
    try:
        wait_for_step(save_dir, proc, 2)
        found = local_procs.find_processes({"job": dist_util._MARKERS[proc.pid]}, dist_util.TEST_JOB_ENV)[
            "job"
        ]
        assert len(found) >= 3 and len({r.pgid for r in found}) >= 3  # torchrun and 2 workers, apart
        kill_job(proc)
        assert not any(local_procs.alive(r) for r in found)
        steps = len(read_metrics(save_dir))
        time.sleep(1.0)
        assert len(read_metrics(save_dir)) == steps  # nothing trains any more
    finally:
        if proc.poll() is None:
            kill_job(proc)


def test_sigterm_saves_at_the_next_step_boundary_and_exits_143(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, maxSteps=5000, checkpoint={"intervalSteps": 1000})
    save_dir = tmp_path / "out"
    proc = start_torchrun(["pretrain", "--config", str(config)], log=tmp_path / "run.log")
    try:
        wait_for_step(save_dir, proc, 3)
        proc.send_signal(signal.SIGTERM)  # to torchrun, as Kubernetes does; it forwards to the workers
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            kill_job(proc)
    log = (tmp_path / "run.log").read_text()
    assert f"exiting {EXIT_PREEMPTED}" in log
    assert f"exitcode: {EXIT_PREEMPTED}" in log or "got signal: 15" in log
    last = read_metrics(save_dir)[-1]["step"]
    saved = committed_steps(*filesystem(str(save_dir / "checkpoints")))
    assert [step for step, _ in saved] == [last]  # saved exactly where it stopped, no later step ran
    assert last < 1000
    assert step_dirs(*filesystem(str(save_dir / "checkpoints"))) == saved


def test_sigterm_exit_code_without_torchrun(tmp_path: Path) -> None:
    """A single process (no launcher in between) reports EXIT_PREEMPTED itself."""
    import sys

    from tests.trainer.dist_util import REPO, _env

    config = tiny_config(tmp_path, maxSteps=5000, checkpoint={"intervalSteps": 1000})
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "olmo_trainer", "pretrain", "--config", str(config)],
            cwd=REPO,
            env=_env(None),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_step(tmp_path / "out", proc, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == EXIT_PREEMPTED
    finally:
        if proc.poll() is None:
            proc.kill()
    last = read_metrics(tmp_path / "out")[-1]["step"]
    assert (tmp_path / "out" / "checkpoints" / f"step{last}" / "MANIFEST.json").exists()
