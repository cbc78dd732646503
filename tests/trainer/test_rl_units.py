"""Pieces of the RL objectives that need no torchrun: the rollout-reusing step source, the value model's
initialisation from a checkpoint (body loaded, head kept), and the group bookkeeping of GRPO batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from olmo_trainer.checkpoint import load_model_weights, save_model_weights
from olmo_trainer.config import ModelConfig
from olmo_trainer.data.prompts import Prompt
from olmo_trainer.model import Transformer
from olmo_trainer.objectives.rl import RolloutSteps, rollout_seed


class Counter:
    """A stand-in for data/order.py's DistributedBatches: step k yields [[Prompt k]] and saves k."""

    def __init__(self) -> None:
        self.step = 0

    def __iter__(self) -> Any:
        while True:
            self.step += 1
            yield [[Prompt(ids=[self.step], ground_truth="1", dataset="gsm8k")]]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


def test_rollout_steps_repeat_each_batch_for_every_epoch_and_resume_inside_one() -> None:
    steps = RolloutSteps(Counter(), epochs=3)
    it = iter(steps)
    seen = [next(it)[0] for _ in range(4)]
    assert [(s.prompts[0].ids, s.rollout, s.epoch) for s in seen] == [
        ([1], 0, 0),
        ([1], 0, 1),
        ([1], 0, 2),
        ([2], 1, 0),
    ]
    steps.cached = ["rollout 1"]  # what step_inputs keeps for the later epochs
    state = steps.state_dict()
    assert state["cached"] == ["rollout 1"] and state["epoch"] == 1
    again = RolloutSteps(Counter(), epochs=3)
    again.load_state_dict(state)
    it = iter(again)
    rest = [next(it)[0] for _ in range(3)]
    assert [(s.prompts[0].ids, s.rollout, s.epoch) for s in rest] == [([2], 1, 1), ([2], 1, 2), ([3], 2, 0)]
    assert again.cached is None  # a new rollout drops the old one
    # At a rollout boundary (all its epochs done) nothing is pending and no rollout is saved.
    boundary = RolloutSteps(Counter(), epochs=2)
    it = iter(boundary)
    next(it), next(it)
    boundary.cached = ["rollout 0"]
    assert boundary.state_dict()["cached"] is None and boundary.state_dict()["prompts"] == []
    assert rollout_seed(1, 2, 0) != rollout_seed(1, 2, 1) and rollout_seed(1, 2, 0) == rollout_seed(1, 2, 0)


def test_value_model_loads_a_policy_checkpoint_except_its_head(tmp_path: Path) -> None:
    cfg = ModelConfig.preset("tiny")
    policy = Transformer(cfg)
    save_model_weights(str(tmp_path / "step1"), policy.state_dict(), step=1)
    value = Transformer(cfg)
    value.lm_head = nn.Linear(cfg.d_model, 1, bias=False)
    head = value.lm_head.weight.detach().clone()
    load_model_weights(str(tmp_path / "step1"), value, skip_mismatched=True)
    for name, tensor in policy.state_dict().items():
        if not name.startswith("lm_head"):
            assert torch.equal(value.state_dict()[name], tensor), name
    assert torch.equal(value.lm_head.weight, head)
