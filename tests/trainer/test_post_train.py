"""SFT and DPO through the one loop under torchrun with 2 gloo processes (tiny preset, synthetic chat data).

- SFT's loss is the same whatever the micro-batch size and world size (2 processes x micro 2 x
  accumulation 2 against 1 process x micro 8), for both reductions' logged values;
- (a preempted and SIGKILLed SFT or DPO job, restarted, ends bit-identical to an uninterrupted one:
  tests/faults/test_trainer_kill.py, which shares `post_config` and `reference` from here);
- DPO computes its reference log-probs once, stores them beside the checkpoints, and a resumed job
  reuses them; its reward margin grows while it trains.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest

from olmo_trainer.data.synth import write_chat_sets
from tests.trainer.dist_util import read_metrics, tiny_config, torchrun, trainer

pytestmark = pytest.mark.slow
STEPS = 12
SIZES = {"sft": 96, "dpo": 96, "rlvr": 8, "heldout": 16, "mc": 8}


@functools.cache
def chat_data() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="olmorun-chat-"))
    write_chat_sets(str(directory), seed=5, sizes=SIZES)
    return directory


def post_config(directory: Path, kind: str, **overrides: Any) -> Path:
    data = {"paths": [str(chat_data() / f"tiny-{kind}.jsonl")], "maxLength": 96}
    settings: dict[str, Any] = {"sft": {"data": data, "epochs": 1}, "dpo": {"data": data, "beta": 5.0}}
    fields: dict[str, Any] = {
        "kind": kind,
        "phase": kind,
        "data": None,
        kind: settings[kind],
        "maxSteps": STEPS,
        "optim": {"lr": 2e-3, "weightDecay": 0.0},
        "schedule": {"kind": "linear", "warmupFraction": 0.1},
        "checkpoint": {"intervalSteps": 4, "keepLast": 5},
    }
    fields.update(overrides)
    return tiny_config(directory, **fields)


@functools.cache
def reference(kind: str) -> Path:
    """An uninterrupted 2-process run of `kind`; returns its save dir."""
    directory = Path(tempfile.mkdtemp(prefix=f"olmorun-{kind}-ref-"))
    result = torchrun([kind, "--config", str(post_config(directory, kind))])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return directory / "out"


def test_sft_loss_is_independent_of_micro_batch_and_world_size(tmp_path: Path) -> None:
    gold = read_metrics(reference("sft"))
    # The reference's schedule pinned in tokens (12 steps x 8 rows x 96), so 3 steps follow it exactly.
    schedule = {"kind": "linear", "warmupTokens": round(0.1 * STEPS * 8 * 96), "tMaxTokens": STEPS * 8 * 96}
    batch = {"globalBatchSize": 8, "microBatchSize": 8}
    config = post_config(tmp_path, "sft", maxSteps=3, batch=batch, schedule=schedule)
    result = trainer(["sft", "--config", str(config)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = read_metrics(tmp_path / "out")
    assert [m["trained_tokens"] for m in ours] == [m["trained_tokens"] for m in gold[:3]]
    for mine, theirs in zip(ours, gold[:3], strict=True):
        assert mine["lr"] == theirs["lr"]
        assert mine["objective"] == pytest.approx(theirs["objective"], rel=1e-5), mine["step"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5), mine["step"]


def test_dpo_logs_rewards_and_its_margin_grows(tmp_path: Path) -> None:
    """One process, 16 pairs seen 6 times each: the policy must learn to prefer the chosen answers."""
    rows = (chat_data() / "tiny-dpo.jsonl").read_text().splitlines()[:16]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(rows) + "\n")
    dpo = {"data": {"paths": [str(data)], "maxLength": 96}, "beta": 5.0}
    config = post_config(tmp_path, "dpo", dpo=dpo, batch={"globalBatchSize": 8, "microBatchSize": 4})
    result = trainer(["dpo", "--config", str(config)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "out")
    keys = {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margin",
        "rewards/accuracy",
        "logps/chosen",
        "logps/rejected",
    }
    assert keys <= set(metrics[0])
    # The policy starts as its own reference: every reward is 0 at step 1 and the loss is log 2.
    assert metrics[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    margins = [m["rewards/margin"] for m in metrics]
    assert sum(margins[-3:]) / 3 > 0.5, margins
    assert sum(m["loss"] for m in metrics[-3:]) / 3 < math.log(2)
    assert all(0.0 <= m["rewards/accuracy"] <= 1.0 for m in metrics)
    assert len(list((tmp_path / "out" / "reference_logps").glob("*.npy"))) == 1
