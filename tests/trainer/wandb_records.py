"""Read back what wandb wrote: the records of an offline run's `run-<id>.wandb` file, by type.

The file is wandb's transaction log: a 7-byte header (`:W&B`, a magic number, a version), then LevelDB's
log format (32 KiB blocks; each record chunk has a CRC32C, a little-endian length and a type: 1 full,
2 first, 3 middle, 4 last), each complete record a `wandb_internal_pb2.Record`. Reading it checks what
wandb itself recorded (group, job type, tags, exit code), not what we passed to it.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def run_records(run_dir: Path) -> dict[str, list[Any]]:
    """{record type ("run", "history", "exit", ...): [Record, ...]} of the one .wandb file in run_dir."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    out: dict[str, list[Any]] = defaultdict(list)
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += room
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out[record.WhichOneof("record_type") or ""].append(record)
            pending = b""
    return out
