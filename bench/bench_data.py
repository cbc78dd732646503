"""Data-loader throughput: tokens/s that `DistributedBatches` delivers, with and without the n-gram filter.

A corpus of random dolma2-sized token ids (uint32, with a few planted repetitive stretches) is written
to a temporary directory, then iterated as OLMo 2 does: windows of 4096, a seeded global order, global
batches strided over ranks. Reported per configuration: tokens/s of the global batch (the step rate
times global batch tokens) and of this rank's share; and the raw speed of the filter alone.

    .venv/bin/python bench/bench_data.py                  # appends a section to bench/RESULTS.md
    .venv/bin/python bench/bench_data.py --tokens 20M --no-append
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from olmo_trainer.config import DataConfig, parse_tokens
from olmo_trainer.data import DistributedBatches, build_dataset
from olmo_trainer.data.arrays import write_tokens
from olmo_trainer.data.ngram import repeated_ngram_mask

HERE = Path(__file__).resolve().parent
SEQ = 4096


def write_corpus(directory: str, num_tokens: int, files: int = 4) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    per_file = num_tokens // files
    for k in range(files):
        tokens = rng.integers(0, 100_278, per_file, dtype=np.uint32)
        for start in rng.integers(0, per_file - 1000, 20):  # ~20 repetitive stretches per file
            tokens[start : start + 600] = np.tile(rng.integers(0, 100_278, 3, dtype=np.uint32), 200)
        path = f"{directory}/part-{k}.npy"
        write_tokens(path, tokens, "uint32")
        paths.append(path)
    return paths


def measure(
    paths: list[str], work: str, *, ngram: bool, gbs: int, world: int, steps: int
) -> dict[str, float]:
    cfg = DataConfig.model_validate(
        {
            "sources": [{"name": "bench", "paths": paths}],
            "sequenceLength": SEQ,
            "ngramFilter": {"enabled": ngram},
        }
    )
    dataset = build_dataset(cfg, seed=6198, work_dir=work)
    batches = DistributedBatches(
        dataset,
        global_batch_size=gbs,
        micro_batch_size=gbs // world,
        rank=0,
        world_size=world,
        seed=6198,
        work_dir=work,
    )
    iterator = iter(batches)
    next(iterator)  # the global-indices array is computed and saved on the first step
    start = time.perf_counter()
    for _ in range(steps):
        micro = next(iterator)
        assert micro[0].dtype == torch.int64
    elapsed = time.perf_counter() - start
    return {"global": steps * gbs * SEQ / elapsed, "rank": steps * gbs // world * SEQ / elapsed}


def filter_speed(repeats: int = 5) -> float:
    batch = np.random.default_rng(1).integers(0, 100_278, (64, SEQ), dtype=np.uint32)
    repeated_ngram_mask(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        repeated_ngram_mask(batch)
    return repeats * batch.size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="40M", help="corpus size (default: %(default)s)")
    parser.add_argument("--global-batch", type=int, default=64, help="instances of 4096 tokens per step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        paths = write_corpus(tmp, parse_tokens(args.tokens))
        for world in (1, 8):
            for ngram in (False, True):
                result = measure(
                    paths, f"{tmp}/work", ngram=ngram, gbs=args.global_batch, world=world, steps=args.steps
                )
                rows.append(
                    f"| {world} | {'on' if ngram else 'off'} | {result['global'] / 1e6:.1f} | "
                    f"{result['rank'] / 1e6:.1f} |"
                )
    speed = filter_speed()
    table = "\n".join(
        [
            "| world size | n-gram filter | global batch Mtok/s | this rank's Mtok/s |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    summary = f"n-gram filter alone (64 x 4096 uint32, periods 1..13): {speed / 1e6:.1f} Mtok/s"
    print(table)
    print(summary)
    if not args.no_append:
        command = "python bench/bench_data.py " + " ".join(sys.argv[1:])
        section = (
            f"\n## bench_data — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"`{command.strip()}` on {platform.machine()}, 1 process, local disk (page cache warm after the "
            "write). "
            f"Corpus {args.tokens} uint32 tokens in 4 files, windows of {SEQ}, global batch "
            f"{args.global_batch} "
            f"instances, {args.steps} steps, rank 0 of the world size shown. With the filter every rank "
            "reads "
            "and checks the whole global batch (so skipped instances are agreed on without "
            "communication).\n\n"
            f"{table}\n\n{summary}\n"
        )
        path = HERE / "RESULTS.md"
        if not path.exists():
            path.write_text(
                "# Benchmark results\n\nEach section: the exact command, the date, the figures.\n"
            )
        with path.open("a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
