"""Loading a checkpoint never runs code from storage: trainer.pt is read with torch's weights-only
unpickler and an explicit allow-list (checkpoint.trainer_file_globals).

- a trainer.pt carrying a pickled callable (os.system through __reduce__), re-committed with a valid
  MANIFEST as an attacker who can write the bucket would, is refused with reason UnsafeCheckpoint by
  every reader (read_trainer_state, Checkpointer.load) and the command never runs;
- what a real job keeps there (numpy's RNG state, an RL job's cached rollout: Prompt, Packed, RLBatch)
  loads, so old and new checkpoints resume unchanged.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import TRAINER_NAME, UNSAFE_CHECKPOINT_REASON, Checkpointer, read_trainer_state
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.data.prompts import Prompt
from olmo_trainer.failure import PermanentFailure
from olmo_trainer.objectives.rl import RLBatch
from olmo_trainer.rollouts import Packed


class Counter:
    def __init__(self, step: int = 0) -> None:
        self.step = step
        self.extra: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, **self.extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


class RunsACommand:
    """What a hostile trainer.pt holds: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def committed(tmp_path: Path, trainer_extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optim = torch.optim.AdamW(model.parameters())
    state = {"model": model, "optim": optim, "trainer": Counter(3)}
    state["trainer"].extra = trainer_extra
    uri = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(), config_hash="h").save(3, state)
    return uri, state


def test_a_trainer_file_carrying_a_pickled_callable_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    uri, state = committed(tmp_path, {})
    marker = tmp_path / "pwned"
    fs, path = manifest.filesystem(uri)
    with fs.open(f"{path}/{TRAINER_NAME}", "wb") as stream:
        torch.save({"world_size": 1, "ranks": [{"step": 3, "x": RunsACommand(f"touch {marker}")}]}, stream)
    old = manifest.read_manifest(fs, path)
    assert old is not None
    record = manifest.build_manifest(fs, path, step=3, config_hash="h", content=old.get("content"))
    manifest.commit(fs, path, record)  # re-committed: the files match their MANIFEST again
    assert manifest.verify(fs, path).ok

    with pytest.raises(PermanentFailure) as refused:
        read_trainer_state(uri)
    assert refused.value.failure.reason == UNSAFE_CHECKPOINT_REASON
    assert "Trying to load unsupported GLOBAL posix.system" in refused.value.failure.message
    assert "was not loaded" in refused.value.failure.message
    with pytest.raises(PermanentFailure, match=UNSAFE_CHECKPOINT_REASON):
        Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(), config_hash="h").load(uri, state)
    assert not marker.exists()


def test_what_jobs_keep_in_the_trainer_file_is_on_the_allow_list(tmp_path: Path) -> None:
    packed = Packed(ids=torch.arange(6).view(2, 3), starts=torch.tensor([1, 2]), mask=torch.ones(2, 3, dtype=torch.bool))
    batch = RLBatch(packed, torch.zeros(2, 3), None, torch.ones(2), {"reward": 1.0}, values=torch.ones(2, 3))
    extra = {
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "data": {"inner": {"cursor": 4}, "prompts": [Prompt([1, 2, 3], "7", "gsm8k")], "cached": [batch]},
    }
    uri, _ = committed(tmp_path, extra)
    loaded = read_trainer_state(uri)
    assert loaded["step"] == 3 and loaded["data"]["prompts"] == [Prompt([1, 2, 3], "7", "gsm8k")]
    again = loaded["data"]["cached"][0]
    assert isinstance(again, RLBatch) and torch.equal(again.packed.ids, packed.ids) and again.sums == {"reward": 1.0}
    kind, keys, *_ = loaded["rng"]["numpy"]
    assert kind == "MT19937" and np.array_equal(keys, np.random.get_state()[1])
