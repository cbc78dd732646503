"""Run `python -m olmo_trainer` under torchrun as a subprocess, the way a job runs, for tests.

    result = torchrun(["pretrain", "--config", str(path)], nproc=2)      # waits, with a timeout
    proc = start_torchrun([...]); ...; kill_job(proc)                     # SIGKILL torchrun AND its workers

torchrun starts each worker in a session of its own (torch.distributed.elastic's SubprocessHandler:
start_new_session), so killing torchrun's process group leaves the workers training: a "SIGKILLed
job" would go on writing beside the next one. Every launch here carries a marker in its environment
(TEST_JOB_ENV, inherited by the workers) and `kill_job` kills every process that has it
(olmo_operator.local_procs, the same lookup `olmorun local` uses for its jobs).

Processes get OMP_NUM_THREADS=1 (2 ranks on 2 cores) and WANDB_MODE=disabled unless the caller
sets it. `tiny_config` writes a TrainConfig JSON for the tiny preset on synthetic data.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_operator import local_procs
from olmo_trainer.config import ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TEST_JOB_ENV = "OLMORUN_TEST_JOB"
"""Set to a fresh token for every launch: how `kill_job` finds a job's workers."""


def kill_job(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGKILL a job started here: torchrun and every worker (found by its TEST_JOB_ENV marker), and
    wait until none of them is left (what a node or pod loss does to a job)."""
    marker = _MARKERS.get(proc.pid)
    records = local_procs.find_processes({"job": marker}, TEST_JOB_ENV).get("job", []) if marker else []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for record in records:
        if local_procs.alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while any(local_procs.alive(r) for r in records):
        assert time.monotonic() < deadline, "a worker outlived SIGKILL"
        time.sleep(0.02)


_MARKERS: dict[int, str] = {}


def _launch(command: list[str], env: dict[str, str] | None, **kwargs: Any) -> subprocess.Popen[Any]:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        command, cwd=REPO, env={**_env(env), TEST_JOB_ENV: marker}, start_new_session=True, **kwargs
    )
    _MARKERS[proc.pid] = marker
    return proc


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def torchrun_command(args: list[str], *, nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "olmo_trainer",
        *args,
    ]


def torchrun(
    args: list[str], *, nproc: int = 2, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run to completion and return the result (stdout and stderr captured).

    On a timeout the whole job is killed (`kill_job`): torchrun's workers must not outlive a test.
    """
    proc = _launch(
        torchrun_command(args, nproc=nproc), env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def start_torchrun(
    args: list[str], *, nproc: int = 2, env: dict[str, str] | None = None, log: Path
) -> subprocess.Popen[bytes]:
    """Start in a new session, marked for `kill_job`; output goes to `log`."""
    with open(log, "wb") as stream:
        return _launch(torchrun_command(args, nproc=nproc), env, stdout=stream, stderr=subprocess.STDOUT)


def trainer(
    args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m olmo_trainer ...` without torchrun (a world of one, or no training at all)."""
    return subprocess.run(
        [sys.executable, "-m", "olmo_trainer", *args],
        cwd=REPO,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tiny_config(directory: Path, *, name: str = "config.json", **overrides: Any) -> Path:
    """A pretrain TrainConfig of the tiny preset on a small synthetic corpus; fields overridable
    (camelCase)."""
    config: dict[str, Any] = {
        "run": "tiny",
        "phase": "pretrain",
        "kind": "pretrain",
        "seed": 7,
        "model": ModelConfig.preset("tiny").model_dump(),
        "data": {
            "sources": [{"name": "general", "synthetic": {"numTokens": "200K", "seed": 3}}],
            "sequenceLength": 64,
        },
        "optim": {"lr": 6e-3},
        "schedule": {"warmupSteps": 2, "finalLrRatio": 0.5},
        "batch": {"globalBatchSize": 8, "microBatchSize": 2},
        "maxSteps": 40,
        "checkpoint": {"intervalSteps": 10, "keepLast": 5},
        "parallel": {"strategy": "fsdp"},
        "saveDir": str(directory / "out"),
    }
    config.update(overrides)
    path = directory / name
    path.write_text(json.dumps(config, indent=2))
    return path


def read_metrics(save_dir: Path) -> list[dict[str, Any]]:
    text = (save_dir / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Run:
    config: TrainConfig
    save_dir: Path
    output: str


@functools.cache
def reference_run() -> Run:
    """The FSDP2 run of `tiny_config`, trained once per test session and shared by the test files."""
    directory = Path(tempfile.mkdtemp(prefix="olmorun-reference-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = tiny_config(directory)
    result = torchrun(["pretrain", "--config", str(path)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return Run(TrainConfig.model_validate_json(path.read_text()), directory / "out", result.stdout)
