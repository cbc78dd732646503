"""Benchmark: `archive_checkpoint` throughput vs a plain s3fs `fs.put` of the same files.

Starts a real SeaweedFS server (tests/s3server.py), writes a committed checkpoint of random files,
then uploads it to fresh prefixes with (a) `fs.put(files, targets)` — s3fs's own concurrent upload,
no verification — (b) `archive_checkpoint` (every file sha256-checked against the MANIFEST while
streaming, remote size checked, MANIFEST last) and (c) the same with `verify_remote=True` (every
object read back and re-hashed). Reports MiB/s and the ratio to `fs.put` (target for (b): >= 0.9).

    .venv/bin/python bench/bench_archive.py                    # 8 x 64 MiB and 64 x 4 MiB
    .venv/bin/python bench/bench_archive.py --append           # also append to bench/RESULTS.md
    .venv/bin/python bench/bench_archive.py --sets 4x16 --repeat 1 --workers 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/ holds the S3 server helper

import fsspec

from olmo_operator import archive
from olmo_trainer import manifest as mf
from tests.s3server import S3Server


def make_checkpoint(directory: Path, count: int, size_mib: int) -> None:
    directory.mkdir(parents=True)
    for i in range(count):
        (directory / f"__{i}_0.distcp").write_bytes(os.urandom(size_mib * 2**20))
    fs = fsspec.filesystem("file")
    mf.commit(fs, str(directory), mf.build_manifest(fs, str(directory), step=1))


def timed(call: Callable[..., object], *args: object, **kwargs: object) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads, s3fs's event loop included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_set(
    server: S3Server, workdir: Path, count: int, size_mib: int, workers: int, repeat: int
) -> dict[str, tuple[float, float]]:
    """Per method: (median MiB/s, median client CPU seconds per GiB)."""
    src = workdir / f"{count}x{size_mib}" / "step1"
    make_checkpoint(src, count, size_mib)
    files = sorted(p for p in src.iterdir() if p.name != mf.MANIFEST_NAME)
    total = sum(p.stat().st_size for p in files)
    bucket = server.make_bucket(f"bench-{count}x{size_mib}")
    opts = server.storage_options()
    fs = server.filesystem()
    run = archive.archive_checkpoint
    methods: dict[str, Callable[[str], tuple[float, float]]] = {
        "fs.put": lambda prefix: timed(
            fs.put, [str(p) for p in files], [f"{prefix}/{p.name}" for p in files]
        ),
        "archive": lambda prefix: timed(run, str(src), f"{prefix}/step1", dst_options=opts, workers=workers),
        "archive+verify_remote": lambda prefix: timed(
            run, str(src), f"{prefix}/step1", dst_options=opts, workers=workers, verify_remote=True
        ),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    names = list(methods)
    for rep in range(repeat):
        # Rotate the order: on a shared machine, load drifts; no method always runs first.
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            samples[name].append(methods[name](f"{bucket}/r{rep}/{name}"))
    gib = total / 2**30
    return {
        name: (
            total / 2**20 / statistics.median(w for w, _ in values),
            statistics.median(c for _, c in values) / gib,
        )
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=["8x64", "64x4"], help="COUNTxMiB file sets")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="median of this many runs")
    parser.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    lines = [
        "| files | fs.put MiB/s | archive MiB/s (ratio) | archive+verify_remote MiB/s (ratio) "
        "| client CPU s/GiB: put / archive / +verify |",
        "|---|---|---|---|---|",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp,
        S3Server.start(Path(tmp) / "s3") as server,
    ):
        for spec in args.sets:
            count, size = (int(x) for x in spec.split("x"))
            rates = bench_set(server, Path(tmp), count, size, args.workers, args.repeat)
            put, arc, ver = rates["fs.put"], rates["archive"], rates["archive+verify_remote"]
            line = (
                f"| {count} x {size} MiB | {put[0]:.1f} | {arc[0]:.1f} ({arc[0] / put[0]:.2f}) "
                f"| {ver[0]:.1f} ({ver[0] / put[0]:.2f}) | {put[1]:.2f} / {arc[1]:.2f} / {ver[1]:.2f} |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.append:
        command = " ".join(["bench/bench_archive.py", *sys.argv[1:]])
        header = [
            "",
            f"### archive vs fs.put, SeaweedFS on loopback ({dt.date.today().isoformat()}, {os.cpu_count()} "
            "CPUs)",
            "",
            f"Command: `.venv/bin/python {command}` (workers={args.workers}, median of {args.repeat})",
            "",
        ]
        results = ROOT / "bench" / "RESULTS.md"
        existing = results.read_text() if results.exists() else "# Benchmark results\n"
        results.write_text(existing.rstrip("\n") + "\n" + "\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
