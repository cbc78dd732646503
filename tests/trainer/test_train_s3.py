"""The loop with its save dir on a real S3 server (SeaweedFS): the metrics record, checkpoints and the
wandb directory when nothing is local, then a restart of the finished job, which trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olmo_trainer import metrics_log
from olmo_trainer.manifest import committed_steps, read_manifest
from tests.s3server import S3Server
from tests.trainer.dist_util import REPO, tiny_config, torchrun

pytestmark = pytest.mark.slow


def test_training_into_s3_and_restarting_a_finished_job(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket("train-loop")
    save_dir = f"{bucket}/ns/tiny/phases/pretrain"
    config = tiny_config(tmp_path, saveDir=save_dir, maxSteps=6, checkpoint={"intervalSteps": 3})
    env = {**s3_server.env(), "WANDB_MODE": "offline", "OLMO_WORK_DIR": str(tmp_path / "work")}
    repo_wandb_before = set((REPO / "wandb").glob("*")) if (REPO / "wandb").exists() else set()

    first = torchrun(["pretrain", "--config", str(config)], env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]

    fs = s3_server.filesystem()
    path = save_dir.removeprefix("s3://")
    lines = metrics_log.read_text(fs, path).splitlines()  # segments on S3, read back as one file
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert not fs.exists(f"{path}/metrics.jsonl")
    assert [step for step, _ in committed_steps(fs, f"{path}/checkpoints")] == [3, 6]
    final = read_manifest(fs, f"{path}/checkpoints/step6")
    assert final is not None and final["extra"]["final"] is True
    # wandb went to a temporary directory: never into the working tree.
    now = set((REPO / "wandb").glob("*")) if (REPO / "wandb").exists() else set()
    assert now == repo_wandb_before

    again = torchrun(["pretrain", "--config", str(config)], env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "step 1/" not in again.stdout
    assert metrics_log.read_text(fs, path).splitlines() == lines
