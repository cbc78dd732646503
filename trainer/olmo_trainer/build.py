"""What the loop and the objectives build a job from: seeded generators, the wrapped model, the data batches.

Below the objectives and the loop (train.py), so that both import it and neither imports the other:
an objective builds its batches (`build_batches`) or a frozen copy of the policy (`build_model`) from
here, never from train.py.

    seed_everything(cfg.seed, info.device)
    model = build_model(cfg, info)                 # meta init, parallelised, materialised, seeded
    batches = build_batches(cfg, plan, info)       # this rank's DistributedBatches over the mixture
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch

from olmo_trainer.config import TrainConfig
from olmo_trainer.data import DistributedBatches, build_dataset
from olmo_trainer.data_record import check_data
from olmo_trainer.distributed import DistInfo, parallelize
from olmo_trainer.errors import DataError
from olmo_trainer.layout import StepPlan
from olmo_trainer.model import Transformer
from olmo_trainer.storage import work_dir

__all__ = ["build_batches", "build_model", "check_data_matches_model", "seed_everything"]


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every generator; on CPU also demand deterministic kernels (bit-identical reruns)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


def build_model(cfg: TrainConfig, info: DistInfo) -> torch.nn.Module:
    """Build on the meta device (no memory), parallelise, materialise on the device, init from a seed.

    FSDP2 shards the meta model before anything is allocated, so a rank only ever holds its shards
    (plus one full weight while it is initialised): a 32B model never has to fit on one GPU. DDP
    materialises the full model first. Either way every rank draws the same numbers from the seeded
    generator, so all parallelisms start from the same weights.
    """
    with torch.device("meta"):
        model = Transformer(cfg.model)
    fsdp = cfg.parallel.strategy == "fsdp"
    if fsdp:
        parallelize(model, cfg.parallel, info)  # in place: parameters become (meta) DTensor shards
    model.to_empty(device=info.device)
    model.init_weights(torch.Generator(device=info.device).manual_seed(cfg.seed))
    return model if fsdp else parallelize(model, cfg.parallel, info)


def check_data_matches_model(cfg: TrainConfig, info: DistInfo) -> None:
    """Refuse data whose recorded vocabulary/EOS/dtype contradict the config (DataError); rank 0 warns
    about sources without a record (data_record.py)."""
    assert cfg.data is not None
    check = check_data(cfg.data, cfg.model)
    if check.problems:
        raise DataError("the data does not match the model:\n  - " + "\n  - ".join(check.problems))
    if info.rank == 0:
        for warning in check.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)


def build_batches(cfg: TrainConfig, plan: StepPlan, info: DistInfo) -> Any:
    """This rank's DistributedBatches over the phase's data mixture."""
    assert cfg.data is not None
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.seed
    scratch = work_dir(cfg)
    check_data_matches_model(cfg, info)
    dataset = build_dataset(cfg.data, seed=seed, work_dir=scratch)
    return DistributedBatches(
        dataset,
        global_batch_size=plan.global_batch_size,
        micro_batch_size=plan.micro_batch_size,
        rank=info.rank,
        world_size=info.world_size,
        seed=seed,
        work_dir=scratch,
        vocab_size=cfg.model.vocab_size,
    )
