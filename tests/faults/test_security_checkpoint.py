"""Loading a checkpoint never runs code from storage (olmo_trainer/safe_load.py): trainer.pt is read with
torch's weights-only unpickler and an explicit allow-list, DCP's `.metadata` (which torch reads with
pickle.load) through an unpickler that knows only DCP's record types, and DCP's non-tensor items
(which torch reads with weights_only=False) with the weights-only unpickler.

- a trainer.pt, a `.metadata` or an optimizer item carrying a pickled callable (os.system through
  __reduce__), re-committed with a valid MANIFEST as an attacker who can write the bucket would, is
  refused with reason UnsafeCheckpoint by every reader (read_trainer_state, Checkpointer.load,
  load_model_weights, load_full_state_dict) and the command never runs; the same files read the way
  torch reads them do run it (the control that shows the files are hostile);
- what a real job keeps there (numpy's RNG state, an RL job's cached rollout: Prompt, Packed, RLBatch)
  loads, so old and new checkpoints resume unchanged.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict

from olmo_trainer import manifest
from olmo_trainer.checkpoint import (
    UNSAFE_CHECKPOINT_REASON,
    Checkpointer,
    load_full_state_dict,
    load_model_weights,
    read_trainer_state,
)
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.data.prompts import Prompt
from olmo_trainer.failure import PermanentFailure
from olmo_trainer.layout import TRAINER_NAME
from olmo_trainer.objectives import TRAINER_STATE_TYPES
from olmo_trainer.rollouts import Packed, RLBatch
from olmo_trainer.storage import filesystem, uri_to_path


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
    fs, path = filesystem(uri)
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
    packed = Packed(
        ids=torch.arange(6).view(2, 3), starts=torch.tensor([1, 2]), mask=torch.ones(2, 3, dtype=torch.bool)
    )
    batch = RLBatch(packed, torch.zeros(2, 3), None, torch.ones(2), {"reward": 1.0}, values=torch.ones(2, 3))
    extra = {
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "data": {"inner": {"cursor": 4}, "prompts": [Prompt([1, 2, 3], "7", "gsm8k")], "cached": [batch]},
    }
    uri, _ = committed(tmp_path, extra)
    with pytest.raises(PermanentFailure, match=UNSAFE_CHECKPOINT_REASON):
        read_trainer_state(uri)  # the RL classes are allowed only where the caller names them
    loaded = read_trainer_state(uri, allowed=TRAINER_STATE_TYPES)
    assert loaded["step"] == 3 and loaded["data"]["prompts"] == [Prompt([1, 2, 3], "7", "gsm8k")]
    again = loaded["data"]["cached"][0]
    assert (
        isinstance(again, RLBatch)
        and torch.equal(again.packed.ids, packed.ids)
        and again.sums == {"reward": 1.0}
    )
    kind, keys, *_ = loaded["rng"]["numpy"]
    assert kind == "MT19937" and np.array_equal(keys, np.random.get_state()[1])


def test_a_trainer_file_naming_rl_batch_where_it_used_to_live_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RLBatch moved from objectives/rl.py to rollouts.py (issue 20's layers): a trainer.pt written
    before names `olmo_trainer.objectives.rl.RLBatch`, and resuming from it must still work. The old
    file is made by pickling the class under its old module name."""
    packed = Packed(
        ids=torch.zeros(1, 2, dtype=torch.long), starts=torch.tensor([1]), mask=torch.ones(1, 1).bool()
    )
    batch = RLBatch(packed, torch.zeros(1, 1), None, torch.ones(1), {"reward": 0.0})
    monkeypatch.setattr(RLBatch, "__module__", "olmo_trainer.objectives.rl")
    uri, _ = committed(tmp_path, {"data": {"cached": [batch]}})
    path = uri_to_path(uri)
    assert b"olmo_trainer.objectives.rl" in (Path(path) / "trainer.pt").read_bytes()
    monkeypatch.undo()
    again = read_trainer_state(uri, allowed=TRAINER_STATE_TYPES)["data"]["cached"][0]
    assert isinstance(again, RLBatch) and again.sums == {"reward": 0.0}


def recommit(uri: str) -> None:
    """Re-hash the directory into a fresh MANIFEST: the files match it again, as an attacker would leave
    them."""
    fs, path = filesystem(uri)
    old = manifest.read_manifest(fs, path) or {}
    manifest.commit(
        fs, path, manifest.build_manifest(fs, path, step=3, config_hash="h", content=old.get("content"))
    )


def test_a_hostile_dcp_index_is_refused_by_every_reader_and_runs_nothing(tmp_path: Path) -> None:
    uri, state = committed(tmp_path, {})
    marker, control = tmp_path / "pwned", tmp_path / "contr"  # same length: the pickle stays well-formed
    metadata = Path(uri_to_path(uri)) / ".metadata"
    metadata.write_bytes(pickle.dumps(RunsACommand(f"touch {marker}")))
    recommit(uri)
    readers = [
        lambda: Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(), config_hash="h").load(
            uri, state
        ),
        lambda: load_model_weights(uri, nn.Linear(4, 2)),
        lambda: load_full_state_dict(uri),
    ]
    for read in readers:
        with pytest.raises(PermanentFailure, match=f"{UNSAFE_CHECKPOINT_REASON}: .*posix.system"):
            read()
    assert not marker.exists()
    pickle.loads(metadata.read_bytes().replace(str(marker).encode(), str(control).encode()))  # torch's way
    assert control.exists()


def test_a_hostile_optimizer_item_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    """DCP stores the optimizer's param_groups values as pickled bytes items, read back with
    weights_only=False by torch's own planner."""
    marker = tmp_path / "pwned"
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optim.step()
    uri, state = committed(tmp_path, {})
    model_sd, optim_sd = get_state_dict(model, optim)
    optim_sd["param_groups"][0]["lr"] = RunsACommand(f"touch {marker}")
    path = Path(uri_to_path(uri))
    for shard in path.glob("*.distcp"):
        shard.unlink()
    dcp.save(
        {"model": model_sd, "optim": optim_sd}, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=True
    )
    recommit(uri)
    with pytest.raises(PermanentFailure, match=f"{UNSAFE_CHECKPOINT_REASON}: .*optim.param_groups.0.lr"):
        Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(), config_hash="h").load(uri, state)
    assert not marker.exists()
    model_sd, optim_sd = get_state_dict(model, optim)
    dcp.load(
        {"model": model_sd, "optim": optim_sd}, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True
    )
    assert marker.exists()  # torch's own planner ran the command: the item was hostile indeed
