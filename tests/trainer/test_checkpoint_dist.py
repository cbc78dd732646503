"""Checkpoints across world sizes with real gloo process groups: saved by 1 process and loaded by 2
(FSDP2 and DDP), saved by 2 and loaded by 1, per-rank trainer state, and async save in 2 processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from olmo_trainer import manifest
from olmo_trainer.checkpoint import Checkpointer, load_full_state_dict
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.storage import filesystem

pytestmark = pytest.mark.slow
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class OddNet(nn.Module):
    """Odd sizes, so that FSDP2 shards unevenly across 2 ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(13, 6)
        self.hidden = nn.Linear(6, 7)
        self.out = nn.Linear(7, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.embed(tokens))))


class RngState:
    """A trainer state that differs per rank (like per-rank RNG streams)."""

    def __init__(self, step: int = 0) -> None:
        self.step = step
        self.rng = torch.get_rng_state()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.rng = state["step"], state["rng"]


def build(strategy: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(1234)  # every rank starts from the same weights, unlike any checkpoint
    model: nn.Module = OddNet()
    if strategy == "fsdp":
        for layer in (model.embed, model.hidden, model.out):
            fully_shard(layer)
        fully_shard(model)
    elif strategy == "ddp":
        model = DistributedDataParallel(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def train_step(model: nn.Module, optim: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model(torch.randint(0, 13, (4, 3), generator=generator)).pow(2).mean().backward()
    optim.step()
    optim.zero_grad()


def full_state(model: nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    """Consolidated model and optimizer state (collective); only rank 0 receives it, others get {}."""
    model_sd = get_model_state_dict(model, options=FULL)
    optim_sd = get_optimizer_state_dict(model, optim, options=FULL)
    return {"model": model_sd, "optim": optim_sd["state"]} if model_sd else {}


def assert_states_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    if not got and dist.is_initialized() and dist.get_rank() != 0:
        return  # consolidated on rank 0 only
    assert got["model"].keys() == want["model"].keys()
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=0, atol=0, msg=key)
    assert got["optim"].keys() == want["optim"].keys()
    for fqn, slots in want["optim"].items():
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(
                got["optim"][fqn][slot], slots[slot], rtol=0, atol=0, msg=f"{fqn}.{slot}"
            )


def worker(rank: int, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    try:
        expected_1 = torch.load(f"{root}/expected-1proc.pt", weights_only=False)
        for strategy in ("fsdp", "ddp"):
            # 1 -> 2: a checkpoint written by one process restores a 2-rank job.
            model, optim = build(strategy)
            trainer = RngState()
            ckpt = Checkpointer(f"{root}/one", CheckpointConfig(), config_hash="h")
            found = ckpt.committed()[-1]
            ckpt.load(found[1], {"model": model, "optim": optim, "trainer": trainer})
            assert_states_equal(full_state(model, optim), expected_1)
            assert trainer.step == 1

            # 2 -> 1: train on, then save from 2 ranks with rank-specific trainer state.
            train_step(model, optim, seed=100 + rank)
            torch.manual_seed(rank)
            ckpt = Checkpointer(f"{root}/two-{strategy}", CheckpointConfig(), config_hash="h")
            ckpt.save(2, {"model": model, "optim": optim, "trainer": RngState(step=2)})
            saved = full_state(model, optim)  # collective: every rank takes part
            if rank == 0:
                torch.save(saved, f"{root}/expected-{strategy}.pt")

            # 2 -> 2: each rank gets its own trainer state back.
            reloaded = RngState()
            other, other_optim = build(strategy)
            ckpt.load(
                f"{root}/two-{strategy}/step2", {"model": other, "optim": other_optim, "trainer": reloaded}
            )
            torch.manual_seed(rank)
            assert torch.equal(reloaded.rng, torch.get_rng_state())
            assert_states_equal(full_state(other, other_optim), full_state(model, optim))

        # Async save from 2 ranks: later updates must not leak into the checkpoint.
        model, optim = build("fsdp")
        train_step(model, optim, seed=7)
        before = get_model_state_dict(model, options=FULL)
        ckpt = Checkpointer(f"{root}/async", CheckpointConfig(async_save=True), config_hash="h")
        ckpt.save(1, {"model": model, "optim": optim})
        train_step(model, optim, seed=8)
        ckpt.wait()
        if rank == 0:
            torch.save(before, f"{root}/expected-async.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_resharding_between_one_and_two_processes(tmp_path: Path) -> None:
    # Saved by one process: the reference state the 2-rank jobs must restore exactly.
    model, optim = build("plain")
    train_step(model, optim, seed=1)
    Checkpointer(str(tmp_path / "one"), CheckpointConfig(), config_hash="h").save(
        1, {"model": model, "optim": optim, "trainer": RngState(step=1)}
    )
    torch.save(full_state(model, optim), tmp_path / "expected-1proc.pt")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(str(tmp_path),), nprocs=2, join=True)

    for strategy in ("fsdp", "ddp"):
        # Saved by 2 ranks, loaded by a single plain process.
        model, optim = build("plain")
        trainer = RngState()
        Checkpointer(str(tmp_path / f"two-{strategy}"), CheckpointConfig(), config_hash="h").load(
            str(tmp_path / f"two-{strategy}" / "step2"), {"model": model, "optim": optim, "trainer": trainer}
        )
        assert_states_equal(full_state(model, optim), torch.load(tmp_path / f"expected-{strategy}.pt"))
        torch.manual_seed(0)
        assert trainer.step == 2 and torch.equal(trainer.rng, torch.get_rng_state())  # rank 0's
        # Each rank hashed its own shard into the MANIFEST: a full re-hash agrees with every entry.
        report = manifest.verify(*filesystem(str(tmp_path / f"two-{strategy}" / "step2")))
        assert report.ok and {"__0_0.distcp", "__1_0.distcp"} <= set(
            manifest.read_manifest(*filesystem(str(tmp_path / f"two-{strategy}" / "step2")))["files"]
        )
        saved = torch.load(tmp_path / f"two-{strategy}" / "step2" / "trainer.pt", weights_only=False)
        assert saved["world_size"] == 2
        assert not torch.equal(saved["ranks"][0]["rng"], saved["ranks"][1]["rng"])

    expected_async = torch.load(tmp_path / "expected-async.pt")
    got = load_full_state_dict(str(tmp_path / "async" / "step1"))
    assert manifest.verify(*filesystem(str(tmp_path / "async" / "step1"))).ok
    for key, value in expected_async.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
