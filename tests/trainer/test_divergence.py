"""A diverged run fails, says where and why, and never commits non-finite weights.

The input of the report: the tiny preset with `optim: {lr: 1.0e+8, maxGradNorm: null}` for 12 steps;
the loss is NaN from step 2. Expected: the job stops at step 2 with reason Diverged (exit 5 alone, a
failure under torchrun), `failure.json` names the step and the values, every committed checkpoint
holds finite weights and none is newer than the divergence.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import Checkpointer, load_full_state_dict, weights_finite
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.failure import PermanentFailure, read_failure
from olmo_trainer.layout import EXIT_PERMANENT, FAILURE_NAME
from olmo_trainer.storage import filesystem
from olmo_trainer.train import check_finite
from tests.trainer.dist_util import read_metrics, tiny_config, torchrun, trainer

DIVERGING = {
    "optim": {"lr": 1.0e8, "maxGradNorm": None},
    "maxSteps": 12,
    "checkpoint": {"intervalSteps": 1, "keepLast": 20},
}


def committed_are_finite(save_dir: Path) -> list[int]:
    fs, root = filesystem(str(save_dir / "checkpoints"))
    steps = [step for step, _ in manifest.committed_steps(fs, root)]
    for step in steps:
        weights = load_full_state_dict(str(save_dir / "checkpoints" / f"step{step}"))
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), step
    return steps


def test_the_issue_input_fails_with_diverged_at_step_2(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, parallel={"strategy": "ddp"}, **DIVERGING)
    result = trainer(["pretrain", "--config", str(config)], env={"OLMORUN_ATTEMPT": "1"})
    assert result.returncode == EXIT_PERMANENT, result.stderr[-3000:]
    assert "Diverged: loss nan, grad_norm nan at step 2" in result.stderr and "Traceback" not in result.stderr
    failure = read_failure(str(tmp_path / "out"), attempt=1)
    assert failure is not None and (failure.reason, failure.step) == ("Diverged", 2)
    assert "loss nan" in failure.message
    assert (
        read_failure(str(tmp_path / "out"), attempt=2) is None
    )  # another attempt's record is not this one's
    metrics = read_metrics(tmp_path / "out")
    assert [m["step"] for m in metrics] == [1, 2] and metrics[-1]["loss"] is None
    assert committed_are_finite(tmp_path / "out") == [1]  # step 1 was finite; nothing after it


@pytest.mark.slow
def test_every_rank_stops_at_the_same_step_under_fsdp(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, **DIVERGING)  # FSDP2, 2 processes
    result = torchrun(["pretrain", "--config", str(config)], env={"OLMORUN_ATTEMPT": "3"})
    assert result.returncode != 0
    assert "IndexError" not in result.stderr
    failure = json.loads((tmp_path / "out" / FAILURE_NAME).read_text())
    assert (failure["reason"], failure["step"], failure["attempt"]) == ("Diverged", 2, 3)
    assert committed_are_finite(tmp_path / "out") == [1]


def test_check_finite_names_the_step_and_each_bad_value() -> None:
    check_finite(7, {"loss": 2.5, "grad_norm": 1.0, "z_loss": math.nan})  # other metrics do not stop a run
    with pytest.raises(PermanentFailure) as caught:
        check_finite(7, {"loss": 2.5, "grad_norm": math.inf})
    assert caught.value.failure.reason == "Diverged" and caught.value.failure.step == 7
    assert "grad_norm inf at step 7" in caught.value.failure.message


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path: Path) -> None:
    model = nn.Linear(4, 3)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(), config_hash="h")
    ckpt.save(1, {"model": model})
    assert weights_finite(model)
    with torch.no_grad():
        model.weight[1, 2] = math.nan
    assert not weights_finite(model)
    with pytest.raises(PermanentFailure, match="weights at step 2 hold NaN or inf"):
        ckpt.save(2, {"model": model})
    assert ckpt.committed()[-1] == (1, str(tmp_path / "checkpoints" / "step1"))
    assert not (tmp_path / "checkpoints" / "step2").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_post_training_objectives_get_the_same_divergence_check(tmp_path: Path, kind: str) -> None:
    """SFT and DPO are objectives on the one loop: the same lr makes them diverge, and they stop alike."""
    from tests.trainer.test_post_train import post_config

    config = post_config(
        tmp_path,
        kind,
        optim={"lr": 1.0e8, "maxGradNorm": None, "weightDecay": 0.0},
        maxSteps=6,
        checkpoint={"intervalSteps": 1, "keepLast": 20},
    )
    result = trainer([kind, "--config", str(config)], env={"OLMORUN_ATTEMPT": "1"}, timeout=300)
    assert result.returncode == EXIT_PERMANENT, result.stderr[-3000:]
    failure = read_failure(str(tmp_path / "out"), attempt=1)
    assert failure is not None and (failure.reason, failure.step) == ("Diverged", 2)
    assert "loss nan, grad_norm nan at step 2" in failure.message
    assert [m["step"] for m in read_metrics(tmp_path / "out")] == [1, 2]
    assert committed_are_finite(tmp_path / "out") == [1]


def test_a_value_model_with_non_finite_weights_is_never_written_either(tmp_path: Path) -> None:
    """PPO checkpoints its value model beside the policy (app_state["value"] = (model, optimizer))."""
    policy, value = nn.Linear(4, 3), nn.Linear(4, 1)
    state = {
        "model": policy,
        "optim": torch.optim.SGD(policy.parameters(), lr=0.1),
        "value": (value, torch.optim.SGD(value.parameters(), lr=0.1)),
    }
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(), config_hash="h")
    ckpt.save(1, state)
    with torch.no_grad():
        value.bias[0] = math.inf
    with pytest.raises(PermanentFailure, match="the weights of 'value' at step 2 hold NaN or inf"):
        ckpt.save(2, state)
    assert ckpt.committed()[-1] == (1, str(tmp_path / "checkpoints" / "step1"))
