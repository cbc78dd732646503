"""RLVR jobs end to end under torchrun with 2 CPU processes (gloo, FSDP2): generation and training in
one job, GRPO (DDP) and PPO (FSDP2), the value model checkpointed beside the policy. export-hf exports
the policy. (A PPO job SIGKILLed twice inside rollouts reused by two epochs resumes bit-identically:
tests/faults/test_trainer_kill.py, which shares `rl_config` and `ppo_reference` from here.)

The model starts from its seeded init, so its responses are random bytes: the prompts mix `gsm8k`
sums (rarely right) and an IFEval all-lowercase constraint (right about half the time), which gives
groups with and without reward variance.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from olmo_trainer.checkpoint import load_full_state_dict, read_trainer_state
from olmo_trainer.config import ModelConfig
from olmo_trainer.export import from_hf
from olmo_trainer.objectives import TRAINER_STATE_TYPES
from tests.trainer.dist_util import REPO, _env, read_metrics, torchrun
from tests.trainer.test_resume import flatten, full_state

pytestmark = pytest.mark.slow


def write_prompts(path: Path, count: int = 24) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(count):
        if i % 2:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            rows.append(
                {
                    "messages": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                    "ground_truth": str(a + b),
                    "dataset": "gsm8k",
                }
            )
        else:
            rows.append(
                {
                    "messages": [{"role": "user", "content": f"Write in lowercase, please ({i})."}],
                    "ground_truth": json.dumps({"func_name": "validate_lowercase"}),
                    "dataset": "ifeval",
                }
            )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def rl_config(directory: Path, algorithm: str, strategy: str = "fsdp", **rlvr: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_prompts(directory / "rl.jsonl")
    config = {
        "run": "tiny",
        "phase": "rl",
        "kind": "rlvr",
        "seed": 5,
        "model": ModelConfig.preset("tiny").model_dump(),
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "constant"},
        "batch": {"globalBatchSize": 4, "microBatchSize": 4},
        "maxSteps": 6,
        "checkpoint": {"intervalSteps": 3, "keepLast": 5},
        "parallel": {"strategy": strategy},
        "saveDir": str(directory / "out"),
        "rlvr": {
            "data": {"paths": [str(directory / "rl.jsonl")], "maxLength": 64},
            "algorithm": algorithm,
            "samplesPerPrompt": 4,
            "klBeta": 0.05,
            "maxNewTokens": 8,
            **rlvr,
        },
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@functools.cache
def ppo_reference() -> Path:
    """The uninterrupted PPO run (2 epochs per rollout), shared by the tests of this file."""
    directory = Path(tempfile.mkdtemp(prefix="olmorun-ppo-"))
    import atexit

    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    config = rl_config(directory, "ppo", ppoEpochs=2)
    result = torchrun(["rlvr", "--config", str(config)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return directory / "out"


def test_grpo_job_generates_scores_and_trains(tmp_path: Path) -> None:
    # DDP here (the PPO tests run FSDP2): the frozen reference is then a plain module on each rank.
    config = rl_config(tmp_path, "grpo", strategy="ddp", maxNewTokens=6)
    result = torchrun(["rlvr", "--config", str(config)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "out")
    assert [m["step"] for m in metrics] == list(range(1, 7))
    for record in metrics:
        for key in (
            "rl/reward",
            "rl/accuracy",
            "rl/kl",
            "rl/clip_fraction",
            "rl/response_length",
            "rl/zero_variance_groups",
            "loss",
        ):
            assert key in record, key
        assert 0 <= record["rl/accuracy"] <= 1 and record["rl/reward"] == pytest.approx(
            10 * record["rl/accuracy"]
        )
        assert 0 < record["rl/response_length"] <= 6
    # Some groups had reward variance and produced a gradient; the policy moved away from the reference.
    assert any(m["rl/zero_variance_groups"] < 1 for m in metrics)
    assert metrics[-1]["rl/kl"] > 0
    # tokens counts the response tokens trained on.
    state = read_trainer_state(str(tmp_path / "out" / "checkpoints" / "step6"), allowed=TRAINER_STATE_TYPES)
    assert state["tokens"] == metrics[-1]["tokens"] <= 6 * 4 * 4 * 6


def test_ppo_value_model_is_checkpointed_and_export_hf_writes_the_policy(tmp_path: Path) -> None:
    out = ppo_reference()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert all("rl/value_loss" in m and "rl/kl" in m for m in metrics)
    # Two PPO epochs per rollout: steps 1-2, 3-4, 5-6 share their rollout (same rewards and lengths).
    for first, second in zip(metrics[0::2], metrics[1::2], strict=True):
        assert first["rl/reward"] == second["rl/reward"]
        assert first["rl/response_length"] == second["rl/response_length"]
    keys = flatten(full_state(out / "checkpoints" / "step6", tmp_path)).keys()
    for prefix in ("model.", "optim.", "value_model.", "value_optim."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert any(k.startswith("value_model.lm_head") for k in keys)

    export = tmp_path / "hf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmo_operator.cli",
            "export-hf",
            str(out / "checkpoints" / "step6"),
            str(export),
        ],
        cwd=REPO,
        env=_env(None),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    exported = from_hf(str(export)).state_dict()
    policy = load_full_state_dict(str(out / "checkpoints" / "step6"))
    assert exported.keys() == policy.keys()
    for name, tensor in policy.items():
        assert torch.equal(exported[name], tensor), name
