"""LR schedules in tokens (schedule.py) and OLMo 2's AdamW parameter groups (optim.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from olmo_trainer.config import ModelConfig, OptimConfig, ScheduleConfig
from olmo_trainer.model import Transformer
from olmo_trainer.optim import build_optimizer, param_groups
from olmo_trainer.schedule import Schedule, build_schedule
from tests.trainer.dist_util import free_port

STEP = 1000  # tokens per step


def cosine(**fields: object) -> ScheduleConfig:
    return ScheduleConfig.model_validate({"kind": "cosine", **fields})


def test_warmup_is_linear_from_zero_to_peak() -> None:
    s = build_schedule(cosine(warmupSteps=10), peak_lr=1e-3, tokens_per_step=STEP, total_tokens=100 * STEP)
    assert s.warmup_tokens == 10 * STEP
    assert s.lr(0) == 0.0
    assert s.lr(STEP) == pytest.approx(1e-4)
    assert s.lr(5 * STEP) == pytest.approx(5e-4)
    assert s.lr(10 * STEP) == pytest.approx(1e-3)
    lrs = [s.lr(t * STEP) for t in range(11)]
    assert lrs == sorted(lrs)


@pytest.mark.parametrize(
    ("fields", "expected_tokens"),
    [
        ({"warmupTokens": 2500}, 2500),
        ({"warmupSteps": 3}, 3 * STEP),
        ({"warmupFraction": 0.1}, 10 * STEP),
        ({}, 0),
    ],
)
def test_warmup_can_be_given_in_tokens_steps_or_fraction(
    fields: dict[str, object], expected_tokens: int
) -> None:
    s = build_schedule(cosine(**fields), peak_lr=1.0, tokens_per_step=STEP, total_tokens=100 * STEP)
    assert s.warmup_tokens == expected_tokens


def test_cosine_decays_to_ten_percent_at_t_max_then_stays() -> None:
    s = build_schedule(cosine(warmupSteps=10), peak_lr=4e-4, tokens_per_step=STEP, total_tokens=110 * STEP)
    assert s.lr(110 * STEP) == pytest.approx(4e-5)
    assert s.lr(60 * STEP) == pytest.approx(4e-4 * (0.1 + 0.9 * 0.5))  # halfway down the cosine
    assert s.lr(500 * STEP) == pytest.approx(4e-5)
    decay = [s.lr(t * STEP) for t in range(10, 111)]
    assert all(a > b for a, b in itertools.pairwise(decay))


def test_cosine_t_max_beyond_the_budget_stops_mid_curve() -> None:
    # OLMo 2 7B: t_max 5T but stopped at 3.9T, so the last LR is well above 10% of the peak.
    s = build_schedule(
        cosine(tMaxTokens="5T"), peak_lr=3e-4, tokens_per_step=4 * 10**6, total_tokens=3_900 * 10**9
    )
    ratio = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3.9 / 5))
    assert s.lr(3_900 * 10**9) == pytest.approx(3e-4 * ratio)
    assert s.lr(3_900 * 10**9) > 3e-5 * 1.5


def test_linear_anneal_goes_from_the_inherited_lr_to_zero() -> None:
    inherited = 6.15e-5  # where OLMo 2 7B's pretraining stopped
    cfg = ScheduleConfig(kind="linear")
    s = build_schedule(cfg, peak_lr=inherited, tokens_per_step=STEP, total_tokens=50 * STEP)
    assert s.lr(0) == pytest.approx(inherited)  # no warmup: starts where the parent stopped
    assert s.lr(25 * STEP) == pytest.approx(inherited / 2)
    assert s.lr(50 * STEP) == 0.0
    # final_lr_ratio belongs to the cosine: a linear anneal still ends at zero.
    assert build_schedule(cfg, peak_lr=1.0, tokens_per_step=STEP, total_tokens=STEP).lr(STEP) == 0.0


def test_constant_holds_the_peak_after_warmup() -> None:
    s = build_schedule(
        ScheduleConfig(kind="constant", warmup_steps=2), peak_lr=0.5, tokens_per_step=STEP, total_tokens=STEP
    )
    assert [s.lr(t * STEP) for t in range(5)] == [0.0, 0.25, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("peak_lr", "tokens_per_step", "total_tokens"),
    [(-1e-9, 1, 1), (1.0, 0, 1), (1.0, 1, 0), (1.0, -5, 10), (1.0, 10, -1)],
)
def test_bad_inputs_are_refused(peak_lr: float, tokens_per_step: int, total_tokens: int) -> None:
    with pytest.raises(ValueError, match="bad schedule inputs: peak_lr="):
        build_schedule(cosine(), peak_lr=peak_lr, tokens_per_step=tokens_per_step, total_tokens=total_tokens)


def test_inputs_on_the_limits_are_accepted() -> None:
    # A zero LR (a frozen phase) and one-token steps or budgets are legal.
    s = build_schedule(cosine(), peak_lr=0.0, tokens_per_step=1, total_tokens=1)
    assert (s.peak_lr, s.warmup_tokens, s.t_max_tokens, s.final_lr) == (0.0, 0, 1, 0.0)


@pytest.mark.parametrize(("kind", "final"), [("cosine", 0.25), ("linear", 0.0), ("constant", 2.5)])
def test_final_lr_of_each_kind(kind: str, final: float) -> None:
    cfg = ScheduleConfig.model_validate({"kind": kind, "finalLrRatio": 0.1})
    s = build_schedule(cfg, peak_lr=2.5, tokens_per_step=STEP, total_tokens=10 * STEP)
    assert (s.kind, s.peak_lr, s.final_lr, s.t_max_tokens) == (kind, 2.5, final, 10 * STEP)


def test_a_schedule_whose_t_max_is_within_warmup_ends_at_its_final_lr() -> None:
    # t_max <= warmup: no decay span; after warmup the LR is the end value (no division by zero).
    for t_max in (5 * STEP, 4 * STEP):
        s = build_schedule(
            cosine(warmupSteps=5, tMaxTokens=t_max), peak_lr=1.0, tokens_per_step=STEP, total_tokens=9 * STEP
        )
        assert s.lr(5 * STEP) == pytest.approx(0.1)
        assert s.lr(9 * STEP) == pytest.approx(0.1)


def test_a_one_token_decay_span() -> None:
    s = Schedule(kind="linear", peak_lr=1.0, warmup_tokens=0, t_max_tokens=1, final_lr=0.0)
    assert [s.lr(0), s.lr(1), s.lr(2)] == [1.0, 0.0, 0.0]


def test_the_lr_formula_of_each_kind_between_peak_and_final() -> None:
    """Schedule.lr with a final LR that build_schedule would not choose, so that each term shows."""
    linear = Schedule(kind="linear", peak_lr=1.0, warmup_tokens=0, t_max_tokens=100, final_lr=0.2)
    assert linear.lr(50) == pytest.approx(0.2 + 0.8 * 0.5)
    assert linear.lr(100) == pytest.approx(0.2)
    cosine_ = Schedule(kind="cosine", peak_lr=1.0, warmup_tokens=0, t_max_tokens=100, final_lr=0.2)
    assert cosine_.lr(25) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    constant = Schedule(kind="constant", peak_lr=1.0, warmup_tokens=10, t_max_tokens=100, final_lr=0.2)
    assert [constant.lr(5), constant.lr(10), constant.lr(50), constant.lr(100)] == [0.5, 1.0, 1.0, 1.0]


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny"))


def test_param_groups_exclude_embeddings_from_weight_decay() -> None:
    model = tiny_model()
    decay, no_decay = param_groups(model, OptimConfig(weight_decay=0.1))
    assert [id(p) for p in no_decay["params"]] == [id(model.embeddings.weight)]  # type: ignore[attr-defined]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    decayed = {id(p) for p in decay["params"]}  # type: ignore[attr-defined]
    assert id(model.lm_head.weight) in decayed  # the untied head is a weight like any other
    assert len(decayed) + 1 == len(list(model.parameters()))


def test_decay_embeddings_option_and_adamw_settings() -> None:
    model = tiny_model()
    _, no_decay = param_groups(model, OptimConfig(decay_embeddings=True))
    assert no_decay["params"] == []
    opt = build_optimizer(model, OptimConfig(), lr=1e-3)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_param_groups_see_through_ddp_wrapping() -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = tiny_model()
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        _, no_decay = param_groups(wrapped, OptimConfig())
        assert [id(p) for p in no_decay["params"]] == [id(model.embeddings.weight)]  # type: ignore[attr-defined]
    finally:
        dist.destroy_process_group()
