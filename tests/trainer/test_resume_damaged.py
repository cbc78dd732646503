"""A committed checkpoint damaged after its commit (one byte flipped, size unchanged) is never loaded.

At resume every rank re-hashes its share of the newest checkpoint's files against the MANIFEST; a
damaged one is skipped with a warning naming the file (and un-committed so that the step is saved
afresh), the previous committed checkpoint is used, and a job whose checkpoints are all damaged fails
with NoIntactCheckpoint, recorded so that it is not retried.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olmo_trainer import manifest
from olmo_trainer.layout import DAMAGED_MANIFEST_NAME, EXIT_PERMANENT, FAILURE_NAME, NOTICE_NAME
from olmo_trainer.storage import filesystem
from tests.trainer.dist_util import read_metrics, tiny_config, torchrun, trainer

pytestmark = pytest.mark.slow


def flip_a_byte(checkpoint: Path) -> str:
    """Flip one byte in the middle of the checkpoint's largest shard; returns the file's name."""
    shard = max(checkpoint.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return shard.name


def test_resume_skips_the_damaged_newest_checkpoint_for_the_previous_one(tmp_path: Path) -> None:
    checkpoint = {"intervalSteps": 2, "keepLast": 5}
    first = tiny_config(tmp_path, maxSteps=6, checkpoint=checkpoint)  # FSDP2, 2 ranks: steps 2, 4, 6
    assert torchrun(["pretrain", "--config", str(first)]).returncode == 0
    out = tmp_path / "out" / "checkpoints"
    damaged = flip_a_byte(out / "step6")
    assert (out / "step6" / damaged).stat().st_size > 0

    longer = tiny_config(tmp_path, name="longer.json", maxSteps=8, checkpoint=checkpoint)
    result = torchrun(["pretrain", "--config", str(longer)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"step6 is damaged: {damaged} differ from its MANIFEST; skipping it" in result.stderr
    assert f"resumed from {out}/step4" in result.stdout
    notice = json.loads((tmp_path / "out" / NOTICE_NAME).read_text())  # the operator's Event and message
    assert notice["reason"] == "CheckpointDamaged" and f"step6 ({damaged})" in notice["message"]
    fs, root = filesystem(str(out))
    for step in (4, 6, 8):  # step 6 was trained again from step 4 and committed afresh
        assert manifest.verify(fs, f"{root}/step{step}").ok, step
    assert [m["step"] for m in read_metrics(tmp_path / "out")][-4:] == [5, 6, 7, 8]


def test_a_job_whose_checkpoints_are_all_damaged_fails_without_retry(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, maxSteps=2, checkpoint={"intervalSteps": 1, "keepLast": 5}, parallel={"strategy": "ddp"}
    )
    assert trainer(["pretrain", "--config", str(config)]).returncode == 0
    out = tmp_path / "out" / "checkpoints"
    names = [flip_a_byte(out / f"step{step}") for step in (1, 2)]
    result = trainer(["pretrain", "--config", str(config)], env={"OLMORUN_ATTEMPT": "2"})
    assert result.returncode == EXIT_PERMANENT, result.stderr[-3000:]
    assert "NoIntactCheckpoint: every committed checkpoint is damaged" in result.stderr
    failure = json.loads((tmp_path / "out" / FAILURE_NAME).read_text())
    assert failure["reason"] == "NoIntactCheckpoint" and failure["attempt"] == 2
    assert all(name in failure["message"] for name in names)


def test_a_damaged_checkpoint_is_uncommitted_with_its_manifest_kept_aside(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from olmo_trainer.checkpoint import Checkpointer
    from olmo_trainer.config import CheckpointConfig

    model = nn.Linear(64, 64)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(keep_last=5), config_hash="h")
    for step in (1, 2):
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpt.save(step, {"model": model})
    assert ckpt.damaged_files(str(tmp_path / "checkpoints" / "step2")) == []
    name = flip_a_byte(tmp_path / "checkpoints" / "step2")
    assert ckpt.damaged_files(str(tmp_path / "checkpoints" / "step2")) == [name]
    assert ckpt.latest_intact() == (1, str(tmp_path / "checkpoints" / "step1"))
    step2 = tmp_path / "checkpoints" / "step2"
    assert (step2 / DAMAGED_MANIFEST_NAME).exists() and not (step2 / manifest.MANIFEST_NAME).exists()
    assert ckpt.committed()[-1] == (1, str(tmp_path / "checkpoints" / "step1"))
