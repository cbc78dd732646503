"""Process group set-up and the one function that parallelises a model (after torchtitan's parallelize).

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
without it (a plain `python -m olmo_trainer`) it starts a world of one. gloo on CPU, nccl on GPU.

`parallelize(model, cfg, device)` applies, in this order: activation checkpointing per block, then
torch.compile per block, then DDP or FSDP2 (`fully_shard` per block, then the root). On GPU with
`precision: bf16`, FSDP2 computes in bf16 and reduces gradients in fp32 (MixedPrecisionPolicy); DDP
keeps fp32 weights and relies on the loop's bf16 autocast instead.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from olmo_trainer.config import ParallelConfig


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_distributed() -> DistInfo:
    """Initialise the default process group (idempotent) and pick this rank's device."""
    if "RANK" not in os.environ:  # not under torchrun: a world of one on this machine
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device
    )


def parallelize(model: nn.Module, cfg: ParallelConfig, info: DistInfo) -> nn.Module:
    """Wrap a model for training; returns the module to call and optimise.

    The model must have `.blocks` (an nn.ModuleList). FSDP2 shards it in place and may be given a
    meta-device model (materialise and init afterwards: each rank then allocates only its shards);
    DDP needs the materialised model with identical parameters on every rank (it checks them).
    """
    blocks: nn.ModuleList = model.blocks  # type: ignore[assignment]
    for index, block in enumerate(blocks):
        if cfg.activation_checkpointing:
            # Recompute each block's activations in backward: memory for ~1/3 more compute.
            block = checkpoint_wrapper(block)
        if cfg.compile:
            block.compile()  # in place: parameter names (and so checkpoints) stay the same
        blocks[index] = block
    if cfg.strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[info.local_rank] if info.is_cuda else None)
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    bf16 = info.is_cuda and cfg.precision == "bf16"
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2 only: skip the gradient reduce-scatter on non-final micro-batches (DDP uses no_sync)."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(enabled)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum floats over ranks in one collective."""
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return tensor.tolist()
