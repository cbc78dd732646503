"""FSDP2 builds on the meta device and initialises shards: the result equals the unsharded init."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from olmo_trainer.build import build_model
from olmo_trainer.config import BatchConfig, ModelConfig, ParallelConfig, TrainConfig
from olmo_trainer.distributed import init_distributed
from olmo_trainer.model import Transformer
from tests.trainer.dist_util import free_port

# Odd sizes so that shards are uneven across two ranks (FSDP2 pads the last one).
CONFIG = ModelConfig.preset("tiny", d_model=72, n_heads=4, mlp_hidden=200, embedding_size=261)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    info = init_distributed()
    cfg = TrainConfig(
        run="r",
        phase="p",
        kind="pretrain",
        seed=11,
        model=CONFIG,
        save_dir=out,
        batch=BatchConfig(global_batch_size=2),
        parallel=ParallelConfig(strategy="fsdp", precision="fp32"),
    )
    model = build_model(cfg, info)
    local = [p.to_local().numel() for p in model.parameters()]  # type: ignore[attr-defined]
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"full": full, "local": sum(local)}, Path(out) / "sharded.pt")
    dist.destroy_process_group()


def test_fsdp_meta_init_equals_unsharded_init(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    saved = torch.load(tmp_path / "sharded.pt", weights_only=True)
    reference = Transformer(CONFIG)
    reference.init_weights(torch.Generator().manual_seed(11))
    expected = reference.state_dict()
    assert saved["full"].keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(saved["full"][name], tensor), name
    # Rank 0 held about half of the parameters, not all of them.
    assert saved["local"] < 0.6 * reference.num_params()
