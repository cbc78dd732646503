"""Checkpointer in one process: round trip, commit by MANIFEST, no overwrite, retention, crash safety,
async save, weights-only helpers, and fsspec (non-local) storage."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_full_state_dict,
    load_model_weights,
    read_train_config,
    read_trainer_state,
    steps_to_delete,
)
from olmo_trainer.config import CheckpointConfig, ModelConfig, TrainConfig
from olmo_trainer.storage import filesystem

REPO = Path(__file__).resolve().parents[2]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 5)
        self.register_buffer("scale", torch.ones(5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(tokens)) * self.scale


class TrainerState:
    """What the training loop keeps: counters and RNG state."""

    def __init__(self, step: int = 0) -> None:
        self.step = step
        self.lr = 0.0
        self.rng = torch.get_rng_state()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "lr": self.lr, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.lr, self.rng = state["step"], state["lr"], state["rng"]


def trained(seed: int, steps: int = 1) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyNet()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(torch.randint(0, 11, (4, 3))).pow(2).mean().backward()
        optim.step()
        optim.zero_grad()
    return model, optim


def app(
    model: nn.Module, optim: torch.optim.Optimizer | None, trainer: TrainerState | None
) -> dict[str, Any]:
    state: dict[str, Any] = {"model": model}
    if optim is not None:
        state["optim"] = optim
    if trainer is not None:
        state["trainer"] = trainer
    return state


def cfg(**kw: Any) -> CheckpointConfig:
    return CheckpointConfig(interval_steps=1, **kw)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# --------------------------------------------------------------------------------------------
# Retention is a pure function
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("committed", "keep_last", "keep_every", "deleted"),
    [
        ([(1, False), (2, False), (3, False)], 3, None, []),
        ([(1, False), (2, False), (3, False), (4, False)], 2, None, [1, 2]),
        ([(10, False), (20, False), (30, False), (40, False)], 1, 20, [10, 30]),
        ([(5, True), (6, False), (7, False)], 1, None, [6]),
        ([(100, False), (150, False), (200, False), (250, False)], 1, 100, [150]),
        ([], 3, 5, []),
    ],
)
def test_retention_table(committed, keep_last, keep_every, deleted) -> None:
    assert steps_to_delete(committed, keep_last=keep_last, keep_every=keep_every) == deleted


# --------------------------------------------------------------------------------------------
# Round trip and commit
# --------------------------------------------------------------------------------------------


def test_round_trip_restores_model_optimizer_and_trainer_state(tmp_path: Path) -> None:
    model, optim = trained(seed=0, steps=2)
    state = TrainerState(step=2)
    state.lr = 1.5e-3
    train_config = TrainConfig(
        run="r", phase="p", kind="pretrain", seed=0, model=ModelConfig.preset("tiny"), save_dir=str(tmp_path)
    )
    ckpt = Checkpointer(
        str(tmp_path / "ckpt"), cfg(), config_hash="abc", parent="s3://x/step9", train_config=train_config
    )
    uri = ckpt.save(2, app(model, optim, state))

    assert uri == f"{tmp_path}/ckpt/step2"
    assert ckpt.committed()[-1] == (2, uri)
    record = manifest.read_manifest(*filesystem(uri))
    assert record is not None
    assert record["step"] == 2 and record["configHash"] == "abc" and record["parent"] == "s3://x/step9"
    assert {"config.json", "trainer.pt", ".metadata"} <= set(record["files"])
    assert manifest.verify(*filesystem(uri)).ok
    assert read_train_config(uri) == train_config

    fresh_model, fresh_optim = trained(seed=1, steps=1)
    fresh_state = TrainerState()
    ckpt.load(uri, app(fresh_model, fresh_optim, fresh_state))
    assert_same_weights(model, fresh_model)
    for group_a, group_b in zip(
        optim.state_dict()["state"].values(), fresh_optim.state_dict()["state"].values(), strict=True
    ):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(group_a[key], group_b[key], rtol=0, atol=0)
    assert fresh_state.step == 2 and fresh_state.lr == 1.5e-3
    assert torch.equal(fresh_state.rng, state.rng)
    assert read_trainer_state(uri)["lr"] == 1.5e-3

    # Training continues identically from the restored state.
    batch = torch.randint(0, 11, (4, 3))
    for m, o in ((model, optim), (fresh_model, fresh_optim)):
        m(batch).pow(2).mean().backward()
        o.step()
    assert_same_weights(model, fresh_model)


def test_weights_only_helpers(tmp_path: Path) -> None:
    model, optim = trained(seed=3)
    uri = Checkpointer(str(tmp_path), cfg(), config_hash="h").save(1, app(model, optim, None))

    full = load_full_state_dict(uri)
    assert full.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(full[key], value)

    other, _ = trained(seed=4)
    load_model_weights(uri, other)
    assert_same_weights(model, other)
    with pytest.raises(CheckpointError, match="no trainer state"):
        read_trainer_state(uri)


def test_uncommitted_and_missing_checkpoints_are_refused(tmp_path: Path) -> None:
    model, optim = trained(seed=0)
    (tmp_path / "step7").mkdir()
    (tmp_path / "step7" / "__0_0.distcp").write_bytes(b"partial")
    ckpt = Checkpointer(str(tmp_path), cfg(), config_hash="h")
    assert ckpt.committed() == []
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        ckpt.load(str(tmp_path / "step7"), app(model, optim, None))
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        load_model_weights(str(tmp_path / "nowhere"), model)
    ckpt.cleanup_uncommitted()
    assert not (tmp_path / "step7").exists()


def test_committed_step_is_never_overwritten(tmp_path: Path) -> None:
    model, optim = trained(seed=0)
    ckpt = Checkpointer(str(tmp_path), cfg(), config_hash="h")
    uri = ckpt.save(5, app(model, optim, None))
    before = (Path(uri) / manifest.MANIFEST_NAME).read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert ckpt.save(5, app(model, optim, None)) == uri
    assert (Path(uri) / manifest.MANIFEST_NAME).read_bytes() == before
    assert manifest.verify(*filesystem(uri)).ok
    other, _ = trained(seed=9)
    load_model_weights(uri, other)
    assert not torch.equal(other.proj.weight, model.proj.weight)  # the first save's weights


def test_partial_directory_of_same_step_is_replaced(tmp_path: Path) -> None:
    """Leftovers of a crashed save (e.g. shards of a bigger world size) must not enter the MANIFEST."""
    (tmp_path / "step3").mkdir()
    (tmp_path / "step3" / "__5_0.distcp").write_bytes(b"stale shard")
    model, optim = trained(seed=0)
    uri = Checkpointer(str(tmp_path), cfg(), config_hash="h").save(3, app(model, optim, None))
    record = manifest.read_manifest(*filesystem(uri))
    assert record is not None and "__5_0.distcp" not in record["files"]


def test_retention_keeps_last_every_and_final(tmp_path: Path) -> None:
    model, optim = trained(seed=0)
    ckpt = Checkpointer(str(tmp_path), cfg(keep_last=2, keep_every=4), config_hash="h")
    for step in range(1, 8):
        ckpt.save(step, app(model, optim, None), final=(step == 3))
    assert [s for s, _ in ckpt.committed()] == [3, 4, 6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step3", "step4", "step6", "step7"]
    record = manifest.read_manifest(*filesystem(str(tmp_path / "step3")))
    assert record is not None and record["extra"]["final"] is True


def test_async_save_snapshots_the_state_and_commits_on_wait(tmp_path: Path) -> None:
    model, optim = trained(seed=0)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(str(tmp_path), cfg(async_save=True), config_hash="h")
    uri = ckpt.save(1, app(model, optim, TrainerState(1)))
    with torch.no_grad():  # training goes on while the shards are written
        for p in model.parameters():
            p.mul_(0).add_(7.0)
    ckpt.cleanup_uncommitted()  # must not remove the save in flight
    ckpt.wait()
    assert ckpt.committed()[-1] == (1, uri)
    full = load_full_state_dict(uri)
    for key, value in expected.items():
        assert torch.equal(full[key], value), key
    # The next save also finishes a pending one first.
    ckpt.save(2, app(model, optim, TrainerState(2)))
    ckpt.save(3, app(model, optim, TrainerState(3)))
    assert ckpt.committed()[-1] == (2, f"{tmp_path}/step2")
    ckpt.wait()
    assert [s for s, _ in ckpt.committed()] == [1, 2, 3]


def test_weights_only_checkpoint_cannot_resume_a_job(tmp_path: Path) -> None:
    model, optim = trained(seed=0)
    uri = Checkpointer(str(tmp_path), cfg(), config_hash="h").save(1, {"model": model})
    with pytest.raises(CheckpointError, match="model weights only"):
        Checkpointer(str(tmp_path), cfg(), config_hash="h").load(uri, app(model, optim, None))


def test_fsspec_storage_round_trip() -> None:
    """A non-local URL goes through FsspecWriter/FsspecReader (fsspec's in-memory filesystem)."""
    model, optim = trained(seed=0)
    ckpt = Checkpointer("memory://olmorun-test/ckpt", cfg(keep_last=1), config_hash="h")
    ckpt.save(1, app(model, optim, TrainerState(1)))
    uri = ckpt.save(2, app(model, optim, TrainerState(2)))
    assert ckpt.committed()[-1] == (2, "memory://olmorun-test/ckpt/step2")
    assert [s for s, _ in ckpt.committed()] == [2]
    other, other_optim = trained(seed=5)
    state = TrainerState()
    ckpt.load(uri, app(other, other_optim, state))
    assert_same_weights(model, other)
    assert state.step == 2
    fs, path = filesystem(uri)
    assert manifest.verify(fs, path).ok


# --------------------------------------------------------------------------------------------
# A crash between the shards and the MANIFEST leaves the last good checkpoint intact
# --------------------------------------------------------------------------------------------

CRASHING_JOB = textwrap.dedent(
    """
    import os, sys, torch
    from olmo_trainer import checkpoint, manifest
    from olmo_trainer import storage
    from olmo_trainer.config import CheckpointConfig
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ckpt = checkpoint.Checkpointer(sys.argv[1], CheckpointConfig(keep_last=1), config_hash="h")
    ckpt.save(1, {"model": model})
    torch.save(model.state_dict(), sys.argv[2])
    with torch.no_grad():
        model.weight.add_(1.0)
    manifest.commit = lambda *a, **k: os._exit(3)   # the process dies right before the MANIFEST
    ckpt.save(2, {"model": model})
    """
)


@pytest.mark.slow
def test_crash_before_manifest_keeps_previous_checkpoint(tmp_path: Path) -> None:
    ckpt_dir, expected = tmp_path / "ckpt", tmp_path / "expected.pt"
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_JOB, str(ckpt_dir), str(expected)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert (ckpt_dir / "step2" / ".metadata").exists()  # shards were written...
    assert not (ckpt_dir / "step2" / manifest.MANIFEST_NAME).exists()  # ...but never committed

    ckpt = Checkpointer(str(ckpt_dir), CheckpointConfig(keep_last=1), config_hash="h")
    assert ckpt.committed()[-1] == (1, f"{ckpt_dir}/step1")
    model = nn.Linear(4, 3)
    load_model_weights(str(ckpt_dir / "step1"), model)
    for key, value in torch.load(expected).items():
        assert torch.equal(model.state_dict()[key], value)
    ckpt.cleanup_uncommitted()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step1"]
    # The resumed job saves step 2 again and retention (keep_last=1) then drops step 1.
    ckpt.save(2, {"model": model})
    assert [s for s, _ in ckpt.committed()] == [2]
    assert json.loads((ckpt_dir / "step2" / manifest.MANIFEST_NAME).read_text())["step"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_checkpoint_restores_on_cpu_and_on_cuda(tmp_path: Path) -> None:
    """GPU counterpart of the round trip: an async save of CUDA tensors restores on either device."""
    torch.manual_seed(0)
    model = TinyNet().cuda()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 11, (4, 3), device="cuda")).pow(2).mean().backward()
    optim.step()
    ckpt = Checkpointer(str(tmp_path), cfg(async_save=True), config_hash="h")
    uri = ckpt.save(1, app(model, optim, TrainerState(1)))
    ckpt.wait()
    expected = {k: v.cpu() for k, v in model.state_dict().items()}

    cpu_model, cpu_optim = trained(seed=1)
    ckpt.load(uri, app(cpu_model, cpu_optim, None))
    torch.manual_seed(2)
    cuda_model = TinyNet().cuda()
    cuda_optim = torch.optim.AdamW(cuda_model.parameters(), lr=1e-2)
    ckpt.load(uri, app(cuda_model, cuda_optim, None))
    for key, value in expected.items():
        assert torch.equal(cpu_model.state_dict()[key], value), key
        assert torch.equal(cuda_model.state_dict()[key].cpu(), value), key
    exp_avg = next(iter(cuda_optim.state.values()))["exp_avg"]
    assert exp_avg.is_cuda
