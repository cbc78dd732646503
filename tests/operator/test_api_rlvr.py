"""The rlvr section of an OlmoRun: every field validated, problems named by their field path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import api
from olmo_trainer.config import RLVRConfig

EXAMPLES = Path(__file__).parents[2] / "examples"


def tiny() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "olmorun-tiny.yaml").read_text())


def rlvr_phase(document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    index = next(i for i, p in enumerate(document["spec"]["phases"]) if p["kind"] == "rlvr")
    return index, document["spec"]["phases"][index]


def problems_of(document: dict[str, Any]) -> dict[str, str]:
    return {p.path: p.message for p in api.check_olmorun(document)}


def test_examples_carry_the_papers_settings() -> None:
    for name in ("olmo2-7b", "olmo2-13b"):
        run = api.parse_olmorun(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))
        phase = run.phase("rlvr")
        assert phase.rlvr is not None and phase.optim is not None
        rl = phase.rlvr
        assert (rl.algorithm, rl.kl_beta, rl.max_new_tokens, rl.temperature) == ("ppo", 0.05, 2048, 1.0)
        assert (rl.gae.gamma, rl.gae.lam, rl.clip, rl.vf_coef, rl.correct_reward) == (
            1.0,
            0.95,
            0.2,
            0.1,
            10.0,
        )
        assert phase.optim.lr == 3e-7
    one = api.parse_olmorun(yaml.safe_load((EXAMPLES / "olmo2-1b.yaml").read_text())).phase("rlvr")
    assert one.rlvr is not None and one.optim is not None
    assert (one.rlvr.algorithm, one.rlvr.samples_per_prompt, one.rlvr.kl_beta, one.optim.lr) == (
        "grpo",
        16,
        0.01,
        5e-7,
    )


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"rlvr": {"samplesPerPrompt": 1}}, "rlvr.samplesPerPrompt", "at least 2 for grpo"),
        ({"rlvr": {"samplesPerPrompt": 0}}, "rlvr.samplesPerPrompt", "must be > 0"),
        (
            {"rlvr": {"algorithm": "reinforce"}},
            "rlvr.algorithm",
            "expected one of grpo, ppo, got 'reinforce'",
        ),
        ({"rlvr": {"klBeta": -0.1}}, "rlvr.klBeta", "must be >= 0"),
        ({"rlvr": {"clip": 1.5}}, "rlvr.clip", "must be < 1"),
        ({"rlvr": {"ppoEpochs": 0}}, "rlvr.ppoEpochs", "must be > 0"),
        ({"rlvr": {"valueInitFrom": "s3://b/rm/step9"}}, "rlvr.valueInitFrom", "only for algorithm ppo"),
        (
            {"rlvr": {"algorithm": "ppo", "gae": {"lambda": 1.2}}},
            "rlvr.gae.lambda",
            "must be <= 1",
        ),
        ({"rlvr": {"temperature": 0}}, "rlvr.temperature", "must be > 0"),
        ({"rlvr": {"maxNewTokens": 64}}, "rlvr.maxNewTokens", "exceeds the model's maxSequenceLength 128"),
        ({"rlvr": {"correctReward": 0}}, "rlvr.correctReward", "must be > 0"),
        ({"rlvr": {"nonStopPenalty": -1}}, "rlvr.nonStopPenalty", "must be >= 0"),
        ({"rlvr": {"valueInitfrom": "x"}}, "rlvr.valueInitfrom", "unknown field"),
        ({"maxSteps": None}, "maxSteps", "set maxSteps"),
        (
            {"batch": {"globalBatchSize": 7, "microBatchSize": 4}},
            "batch.globalBatchSize",
            "do not split over 2 ranks",
        ),
        ({"batch": {"globalBatchSize": 8, "microBatchSize": 3}}, "batch.microBatchSize", "64 sequences"),
    ],
)
def test_bad_rlvr_settings_name_their_field(change: dict[str, Any], path: str, fragment: str) -> None:
    document = tiny()
    index, phase = rlvr_phase(document)
    for key, value in change.items():
        if value is None:
            phase.pop(key, None)
        elif isinstance(value, dict):
            phase[key] = {**phase.get(key, {}), **value}
        else:
            phase[key] = value
    found = problems_of(document)
    full = f"spec.phases[{index}].{path}"
    assert full in found, found
    assert fragment in found[full]


def test_rlvr_batch_splits_prompts_over_ranks() -> None:
    document = tiny()
    document["spec"]["cluster"] = {**document["spec"].get("cluster", {}), "procsPerNode": 3}
    index, _ = rlvr_phase(document)
    found = problems_of(copy.deepcopy(document))
    assert "do not split over 3 ranks" in found.get(f"spec.phases[{index}].batch.globalBatchSize", ""), found


def test_ppo_settings_round_trip_with_lambda() -> None:
    rl = RLVRConfig.model_validate(
        {
            "data": {"paths": ["x.jsonl"]},
            "algorithm": "ppo",
            "gae": {"lambda": 0.9},
            "valueInitFrom": "s3://b/rm/step1",
        }
    )
    assert rl.gae.lam == 0.9 and rl.value_init_from == "s3://b/rm/step1"
    assert rl.model_dump(by_alias=True)["gae"] == {"gamma": 1.0, "lambda": 0.9}
    with pytest.raises(ValueError, match="only for algorithm ppo"):
        RLVRConfig.model_validate({"data": {"paths": ["x.jsonl"]}, "valueInitFrom": "s3://b/rm/step1"})
