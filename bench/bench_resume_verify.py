"""What verifying a checkpoint against its MANIFEST costs at resume, extrapolated to OLMo 2 7B.

At resume every rank re-hashes its share of the newest checkpoint's files (Checkpointer.damaged_files:
rank r takes every world-size-th file), so the wall time is about (checkpoint bytes / ranks) / (sha256
read throughput per rank). This measures that throughput with `manifest.verify_file` on shard-sized
files on local disk, then extrapolates to a 7B checkpoint: 7.30e9 parameters x (4 B fp32 weights +
8 B AdamW moments) = 87.6 GB in DCP shards (ModelConfig.preset('olmo2-7b').num_params(); the trainer
keeps fp32 master weights and two fp32 moments).

    .venv/bin/python bench/bench_resume_verify.py                # 4 x 256 MB shards; appends to RESULTS.md
    .venv/bin/python bench/bench_resume_verify.py --shard-mb 64 --shards 4 --no-append
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from olmo_trainer import manifest
from olmo_trainer.storage import filesystem

HERE = Path(__file__).resolve().parent
PARAMS_7B = 7.30e9
BYTES_PER_PARAM = 4 + 8  # fp32 weights + AdamW exp_avg and exp_avg_sq
RANKS = (8, 64, 512)


def measure(shard_mb: int, shards: int) -> tuple[float, int]:
    """(seconds, bytes) to verify `shards` files of `shard_mb` MB, one process, page cache dropped
    where possible (files are written fresh; a re-read right after writing may hit the cache)."""
    with tempfile.TemporaryDirectory(prefix="olmorun-verify-") as directory:
        fs, root = filesystem(directory)
        chunk = os.urandom(1 << 20)
        for i in range(shards):
            with open(os.path.join(root, f"__{i}_0.distcp"), "wb") as f:
                for _ in range(shard_mb):
                    f.write(chunk)
        record = manifest.build_manifest(fs, root, step=1)
        start = time.perf_counter()
        for rel, expected in sorted(record["files"].items()):
            assert manifest.verify_file(fs, f"{root}/{rel}", expected) is None
        return time.perf_counter() - start, sum(e["size"] for e in record["files"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    seconds, size = measure(args.shard_mb, args.shards)
    rate = size / seconds
    total = PARAMS_7B * BYTES_PER_PARAM
    lines = [
        f"- measured: {size / 1e6:,.0f} MB in {args.shards} shards verified in {seconds:.2f} s by one "
        "process: "
        f"{rate / 1e6:,.0f} MB/s (sha256 + read, local disk, page cache warm from writing)",
        f"- 7B checkpoint with AdamW state: {total / 1e9:,.1f} GB; one process alone: {total / rate:,.0f} s",
    ]
    lines += [
        f"- shared by {n} ranks (each re-hashes 1/{n}): {total / rate / n:,.1f} s at resume" for n in RANKS
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(
                f"\n## bench_resume_verify — {stamp}\n\n`.venv/bin/python bench/bench_resume_verify.py "
                f"--shard-mb {args.shard_mb} --shards {args.shards}` (2 shared CPU cores)\n\n{text}\n\n"
                "Network storage reads slower than local disk: a SeaweedFS S3 GET on loopback runs ~170 MB/s "
                "per client (bench_archive's reads), which then bounds the per-rank rate.\n"
            )


if __name__ == "__main__":
    main()
