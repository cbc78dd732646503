"""optim.skipStep: OLMo-core's skip-step rule (skip_step.py), checked against hand-computed values, and
a real job whose outlier updates are skipped (weights unchanged) until the configured limit stops it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from olmo_operator.api import check_olmorun
from olmo_trainer.checkpoint import load_full_state_dict
from olmo_trainer.config import OptimConfig, TrainConfig
from olmo_trainer.failure import EXIT_PERMANENT, read_failure
from olmo_trainer.skip_step import SkipStepRule, z_score
from tests.trainer.dist_util import read_metrics, tiny_config, trainer

ROOT = Path(__file__).parents[2]
TEN_ONES_TEN_THREES = [1.0, 3.0] * 10
"""mean 2, sample variance 20 x 1^2 / 19, std sqrt(20/19) = 1.0259783520851542."""


def rule(
    window: int = 20, sigma: float = 6.0, limit: int = 5, history: list[float] | None = None
) -> SkipStepRule:
    r = SkipStepRule(sigma=sigma, window=window, limit=limit)
    for value in history or []:
        r.observe(value, value)
    r.skipped = 0
    return r


def test_z_score_by_hand() -> None:
    std = math.sqrt(20 / 19)
    assert z_score(8.155, TEN_ONES_TEN_THREES) == pytest.approx(6.155 / std)  # 5.99906
    assert z_score(-4.2, TEN_ONES_TEN_THREES) == pytest.approx(6.2 / std)  # a drop counts too (|x - mean|)
    assert z_score(2.0, [2.0] * 20) == 0.0 and z_score(2.5, [2.0] * 20) == math.inf


def test_six_sigma_threshold_by_hand() -> None:
    """mean 2 + 6 x 1.02598 = 8.15587: 8.155 is kept, 8.157 skipped; the same for the gradient norm."""
    assert not rule(history=TEN_ONES_TEN_THREES).observe(8.155, 2.0).skip
    assert rule(history=TEN_ONES_TEN_THREES).observe(8.157, 2.0).skip
    assert rule(history=TEN_ONES_TEN_THREES).observe(2.0, 8.157).skip
    assert rule(history=TEN_ONES_TEN_THREES).observe(-4.2, 2.0).skip
    verdict = rule(history=TEN_ONES_TEN_THREES, sigma=3.0).observe(5.1, 2.0)  # 3.1 / 1.02598 = 3.0215
    assert (
        verdict.skip
        and verdict.loss_z == pytest.approx(3.1 / math.sqrt(20 / 19))
        and verdict.grad_norm_z == 0.0
    )
    assert not rule(history=TEN_ONES_TEN_THREES, sigma=3.0).observe(5.0, 2.0).skip  # 3 / 1.02598 = 2.924


def test_nothing_is_skipped_before_max_20_or_half_the_window_values() -> None:
    """OLMo-core: `len(losses) < max(20, rolling_interval_length // 2)`, the step's own value included."""
    assert SkipStepRule(sigma=6, window=19, limit=0).min_values == 20
    assert SkipStepRule(sigma=6, window=128, limit=0).min_values == 64
    early = rule(history=TEN_ONES_TEN_THREES[:18])  # 18 before + this one = 19 < 20
    verdict = early.observe(1e6, 1e6)
    assert not verdict.skip and verdict.loss_z is None
    assert rule(history=TEN_ONES_TEN_THREES[:19]).observe(1e6, 2.0).skip  # 19 before + this one = 20


def test_the_window_rolls_and_keeps_skipped_values() -> None:
    """window 20: after a skipped 100 the history is the last 19 alternating values and 100, so a
    lasting new level is accepted again (OLMo-core records the value before deciding)."""
    r = rule(history=TEN_ONES_TEN_THREES)
    assert r.observe(100.0, 2.0).skip
    assert list(r.losses) == [*TEN_ONES_TEN_THREES[1:], 100.0]
    history = [*TEN_ONES_TEN_THREES[1:], 100.0]
    expected = abs(100.0 - sum(history) / 20) / torch.tensor(history, dtype=torch.float64).std().item()
    verdict = r.observe(100.0, 2.0)  # z = 4.15: within 6 sigma of a history that holds a 100
    assert verdict.loss_z == pytest.approx(expected) and not verdict.skip


def test_the_limit_counts_skips_and_survives_a_resume() -> None:
    r = rule(history=TEN_ONES_TEN_THREES, limit=1)
    assert r.observe(50.0, 2.0).skip and (r.skipped, r.exceeded) == (1, False)
    resumed = SkipStepRule(sigma=6.0, window=20, limit=1)
    resumed.load_state_dict(r.state_dict())
    assert resumed.state_dict() == r.state_dict()
    assert resumed.observe(1e6, 2.0).skip and (resumed.skipped, resumed.exceeded) == (2, True)


@pytest.mark.parametrize(
    ("skip_step", "path", "fragment"),
    [
        (
            {"window": 4, "maxSkipped": 2},
            "spec.phases[0].optim.skipStep.window",
            "must be >= 19, got 4",
        ),
        ({"sigma": 0, "maxSkipped": 2}, "spec.phases[0].optim.skipStep.sigma", "must be > 0.0, got 0"),
        ({"sigma": 6}, "spec.phases[0].optim.skipStep.maxSkipped", "required"),
        ({"maxSkipped": -1}, "spec.phases[0].optim.skipStep.maxSkipped", "must be >= 0, got -1"),
        (
            {"maxSkipped": 2, "sigmaFactor": 6},
            "spec.phases[0].optim.skipStep.sigmaFactor",
            "unknown field; did you mean `sigma`?",
        ),
    ],
)
def test_a_bad_skip_step_is_refused_with_its_field_path(
    skip_step: dict[str, Any], path: str, fragment: str
) -> None:
    document = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())
    document["spec"]["phases"][0]["optim"] = {"lr": 1e-3, "skipStep": skip_step}
    problems = {p.path: p.message for p in check_olmorun(document)}
    assert path in problems and fragment in problems[path].lower(), problems


def test_an_unset_skip_step_leaves_configs_and_their_hashes_as_they_were(tmp_path: Path) -> None:
    assert "skipStep" not in OptimConfig().model_dump(by_alias=True)
    assert OptimConfig(skip_step={"maxSkipped": 1}).model_dump(by_alias=True)["skipStep"] == {
        "sigma": 6.0,
        "window": 128,
        "maxSkipped": 1,
    }
    cfg = TrainConfig.model_validate_json(tiny_config(tmp_path).read_text())
    assert "skipStep" not in cfg.to_json()
    assert (
        cfg.config_hash()
        != cfg.model_copy(update={"optim": OptimConfig(skip_step={"maxSkipped": 1})}).config_hash()
    )


@pytest.mark.slow
def test_a_job_skips_outliers_without_touching_the_weights_then_stops_at_the_limit(tmp_path: Path) -> None:
    """A tiny sigma makes every judged step an outlier: from step 20 (the first the rule judges, window
    19) the updates are skipped, the weights stay those of step 19, and the third skip (maxSkipped 2)
    stops the job as Diverged."""
    optim = {"lr": 1e-3, "skipStep": {"sigma": 1e-9, "window": 19, "maxSkipped": 2}}
    config = tiny_config(
        tmp_path,
        parallel={"strategy": "ddp"},
        optim=optim,
        maxSteps=30,
        checkpoint={"intervalSteps": 1, "keepLast": 40},
    )
    result = trainer(["pretrain", "--config", str(config)], env={"OLMORUN_ATTEMPT": "1"}, timeout=300)
    assert result.returncode == EXIT_PERMANENT, result.stdout[-2000:] + result.stderr[-3000:]
    failure = read_failure(str(tmp_path / "out"), attempt=1)
    assert failure is not None and (failure.reason, failure.step) == ("Diverged", 22)
    assert "3 steps skipped by optim.skipStep, more than maxSkipped 2" in failure.message
    metrics = read_metrics(tmp_path / "out")
    assert [m["step"] for m in metrics] == list(range(1, 23))
    assert [m["step_skipped"] for m in metrics] == [0.0] * 19 + [1.0] * 3
    assert [m["skipped_steps"] for m in metrics][-4:] == [0, 1, 2, 3]
    assert "warning: step 20 skipped by optim.skipStep" in result.stdout

    def weights(step: int) -> dict[str, torch.Tensor]:
        state = load_full_state_dict(str(tmp_path / "out" / "checkpoints" / f"step{step}"))
        return {k: v for k, v in state.items() if k.startswith("model.") or "weight" in k}

    w18, w19, w21 = weights(18), weights(19), weights(21)
    assert w19.keys() == w21.keys() and w19
    assert all(torch.equal(w19[k], w21[k]) for k in w19)  # steps 20 and 21 changed nothing
    assert not all(torch.equal(w18[k], w19[k]) for k in w18)  # step 19, not judged yet, did
