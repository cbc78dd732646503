"""Run `python -m olmo_trainer` under torchrun as a subprocess, the way a job runs, for tests.

    result = torchrun(["pretrain", "--config", str(path)], nproc=2)      # waits, with a timeout
    proc = start_torchrun([...]); ...; os.killpg(proc.pid, signal.SIGKILL)  # its own process group

Processes get OMP_NUM_THREADS=1 (2 ranks on 2 cores) and WANDB_MODE=disabled unless the caller
sets it. `tiny_config` writes a TrainConfig JSON for the tiny preset on synthetic data.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_trainer.config import ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    On a timeout the whole process group is killed: torchrun's workers must not outlive a test.
    """
    proc = subprocess.Popen(
        torchrun_command(args, nproc=nproc),
        cwd=REPO,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def start_torchrun(
    args: list[str], *, nproc: int = 2, env: dict[str, str] | None = None, log: Path
) -> subprocess.Popen[bytes]:
    """Start in a new session (so the whole tree can be signalled); output goes to `log`."""
    with open(log, "wb") as stream:
        return subprocess.Popen(
            torchrun_command(args, nproc=nproc),
            cwd=REPO,
            env=_env(env),
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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
    """A pretrain TrainConfig of the tiny preset on a small synthetic corpus; fields overridable (camelCase)."""
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
