"""olmo_trainer.layout's rules at their boundaries: every path it names, step names next to look-alikes,
the budget arithmetic (`total_steps`, `plan_steps`, `final_step`) with its exact errors. Expected values
are written from the module docstring (the one home of these rules), not read back from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from olmo_trainer import layout
from olmo_trainer.config import TrainConfig
from tests.trainer.dist_util import tiny_config


def config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    return TrainConfig.model_validate_json(tiny_config(tmp_path, **overrides).read_text())


def test_every_file_of_a_job_directory() -> None:
    assert layout.failure_uri("s3://b/p/") == "s3://b/p/failure.json"
    assert layout.notice_uri("/d") == "/d/notice.json"
    assert (
        layout.damaged_manifest_path("/d/checkpoints/step3") == "/d/checkpoints/step3/MANIFEST.damaged.json"
    )
    assert layout.join("s3://bX", "a", "b") == "s3://bX/a/b"  # only slashes are trimmed
    assert layout.join("/", "a") == "/a"


@pytest.mark.parametrize(
    ("uri", "step"), [("s3://b/step5X", None), ("s3://b/step5//", 5), ("a/b/c/step2", 2)]
)
def test_step_of_next_to_look_alikes(uri: str, step: int | None) -> None:
    assert layout.step_of(uri) == step


def test_total_steps_errors_and_the_smallest_step() -> None:
    assert layout.total_steps(max_steps=None, max_tokens=3, tokens_per_step=1) == 3
    with pytest.raises(ValueError, match=r"^tokens per step must be positive, got 0$"):
        layout.total_steps(max_steps=None, max_tokens=3, tokens_per_step=0)
    with pytest.raises(ValueError, match=r"^set a budget: maxSteps or maxTokens$"):
        layout.total_steps(max_steps=None, max_tokens=None, tokens_per_step=8)
    assert (
        layout.total_steps(max_steps=5, max_tokens=None, tokens_per_step=0) == 5
    )  # a step budget needs no size


def test_plan_steps_by_hand(tmp_path: Path) -> None:
    # global 8 = micro 2 x world 2 x accumulation 2; 8 x 64 = 512 tokens a step; 10,000 tokens -> 20 steps
    cfg = config(tmp_path, maxSteps=None, maxTokens="10K")
    assert layout.plan_steps(cfg, world_size=2) == layout.StepPlan(
        global_batch_size=8,
        micro_batch_size=2,
        accumulation=2,
        sequence_length=64,
        tokens_per_step=512,
        total_steps=20,
        flops_per_token=cfg.model.flops_per_token(64),  # the model's formula at this sequence length
    )
    plan = layout.plan_steps(cfg, world_size=2)
    assert plan.total_tokens == 20 * 512
    assert layout.plan_steps(config(tmp_path), world_size=4).accumulation == 1
    with pytest.raises(
        ValueError, match=r"^globalBatchSize 8 is not divisible by microBatchSize x world size = 2 x 3$"
    ):
        layout.plan_steps(config(tmp_path), world_size=3)
    no_batch = config(tmp_path).model_copy(update={"batch": None})
    with pytest.raises(ValueError, match=r"^a pretrain job needs `batch` and `data`$"):
        layout.plan_steps(no_batch, world_size=1)
    with pytest.raises(ValueError, match=r"^a pretrain job needs `batch` and `data`$"):
        layout.plan_steps(config(tmp_path).model_copy(update={"data": None}), world_size=1)


def test_final_step_of_a_budget_a_soup_and_an_unknown_end(tmp_path: Path) -> None:
    assert layout.final_step(config(tmp_path)) == 40  # maxSteps
    assert layout.final_step(config(tmp_path, maxSteps=None, maxTokens="10K")) == 20  # ceil(10,000 / 512)
    base = config(tmp_path)
    assert layout.final_step(base.model_copy(update={"batch": None})) is None
    assert layout.final_step(base.model_copy(update={"data": None})) is None
    assert layout.final_step(base.model_copy(update={"max_steps": None, "max_tokens": None})) is None
    soup = base.model_copy(update={"kind": "soup", "soup_from": ["s3://b/a/step7", "s3://b/b/step9/"]})
    assert layout.final_step(soup) == 9
    assert (
        layout.final_step(soup.model_copy(update={"soup_from": ["s3://b/a/step7", "s3://b/b/latest"]}))
        is None
    )
    assert layout.final_step(soup.model_copy(update={"soup_from": []})) is None
