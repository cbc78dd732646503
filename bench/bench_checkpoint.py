"""Checkpoint save/load time versus model size, 1 and 2 processes (gloo, FSDP2 when 2), local disk.

Each case trains nothing: it builds an MLP stack of about N parameters with AdamW state (so a
checkpoint holds 3 x N fp32 values, as a real one does), then times

- save:   Checkpointer.save (DCP shard write, each rank hashing its own shards, rank 0 the rest, MANIFEST),
- hash:   manifest.build_manifest alone on the written checkpoint by one process (what `olmorun verify`
          or a single-process commit pays; `save` pays only the largest rank's share),
- load:   Checkpointer.load into a fresh model and optimizer (same world size),
- reshard: the 2-process checkpoint loaded by 1 process (only for the 2-process rows).

Times are the slowest rank's, the median of --repeat runs. `--append` adds a section to
bench/RESULTS.md with the command and date.

    .venv/bin/python bench/bench_checkpoint.py --sizes 5M,25M,100M --repeat 3 --append
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import Checkpointer
from olmo_trainer.config import CheckpointConfig, parse_tokens
from olmo_trainer.storage import filesystem

WIDTH = 1024  # each layer is WIDTH x WIDTH (+ bias): about 1.05M parameters


def build(num_params: int, world: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers = max(1, round(num_params / (WIDTH * WIDTH + WIDTH)))
    model = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(layers)))
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, WIDTH)).sum().backward()
    optim.step()  # creates exp_avg and exp_avg_sq
    optim.zero_grad()
    return model, optim


def slowest(seconds: float) -> float:
    if not dist.is_initialized():
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def timed_case(num_params: int, root: str, repeat: int) -> dict[str, float]:
    world = dist.get_world_size() if dist.is_initialized() else 1
    model, optim = build(num_params, world)
    fresh_model, fresh_optim = build(num_params, world)
    times: dict[str, list[float]] = {"save": [], "hash": [], "load": []}
    for attempt in range(repeat):
        directory = f"{root}/w{world}-r{attempt}"
        ckpt = Checkpointer(directory, CheckpointConfig(keep_last=1), config_hash="bench")
        start = time.perf_counter()
        uri = ckpt.save(1, {"model": model, "optim": optim})
        times["save"].append(slowest(time.perf_counter() - start))
        if not dist.is_initialized() or dist.get_rank() == 0:
            fs, path = filesystem(uri)
            start = time.perf_counter()
            manifest.build_manifest(fs, path, step=1)
            times["hash"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ckpt.load(uri, {"model": fresh_model, "optim": fresh_optim})
        times["load"].append(slowest(time.perf_counter() - start))
    result = {name: statistics.median(values) for name, values in times.items() if values}
    size = sum(p.stat().st_size for p in Path(f"{root}/w{world}-r0/step1").iterdir())
    result["gib"] = size / 2**30
    result["params"] = sum(p.numel() for p in model.parameters())
    return result


def _worker(rank: int, num_params: int, root: str, repeat: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/store-{num_params}", rank=rank, world_size=2)
    try:
        result = timed_case(num_params, root, repeat)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def reshard_load(num_params: int, root: str) -> float:
    """The 2-process checkpoint restored by one process."""
    model, optim = build(num_params, 1)
    uri = f"{root}/w2-r0/step1"
    start = time.perf_counter()
    Checkpointer(f"{root}/w2-r0", CheckpointConfig(), config_hash="bench").load(
        uri, {"model": model, "optim": optim}
    )
    return time.perf_counter() - start


def run(sizes: list[int], repeat: int, workdir: str) -> list[dict[str, Any]]:
    rows = []
    for num_params in sizes:
        root = tempfile.mkdtemp(prefix=f"ckpt-{num_params}-", dir=workdir)
        try:
            one = timed_case(num_params, root, repeat)
            rows.append({"procs": 1, **one})
            out = f"{root}/result.pt"
            mp.spawn(_worker, args=(num_params, root, repeat, out), nprocs=2, join=True)
            two = torch.load(out)
            two["reshard"] = reshard_load(num_params, root)
            rows.append({"procs": 2, **two})
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(rows[-2], rows[-1], flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| params | procs | checkpoint GiB | save s | re-hash all files, 1 process s | load s | save GiB/s "
        "| load 2->1 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reshard = f"{row['reshard']:.2f}" if "reshard" in row else "-"
        lines.append(
            f"| {row['params'] / 1e6:.1f}M | {row['procs']} | {row['gib']:.2f} | {row['save']:.2f} | "
            f"{row['hash']:.2f} | {row['load']:.2f} | {row['gib'] / row['save']:.2f} | {reshard} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5M,25M,100M", help="parameter counts, comma separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", default=None, help="where checkpoints are written (default: system temp)"
    )
    parser.add_argument("--append", action="store_true", help="append the results to bench/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sizes = [parse_tokens(size) for size in args.sizes.split(",")]
    rows = run(sizes, args.repeat, args.workdir or tempfile.gettempdir())
    text = table(rows)
    print(text)
    if args.append:
        command = " ".join(["`.venv/bin/python bench/bench_checkpoint.py", *sys.argv[1:]]) + "`"
        section = (
            f"\n## bench_checkpoint: save/load vs model size, local disk ({dt.date.today().isoformat()})\n\n"
            f"Command: {command}  \n"
            f"Machine: {os.cpu_count()} CPU cores (shared with other engineers' jobs), local disk, torch "
            f"{torch.__version__}, gloo; 2 processes use FSDP2. Model + AdamW state (3 fp32 values per "
            "parameter). Median of the slowest rank over the repeats.\n\n"
            f"{text}\n"
        )
        results = Path(__file__).resolve().parent / "RESULTS.md"
        with results.open("a") as stream:
            stream.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
