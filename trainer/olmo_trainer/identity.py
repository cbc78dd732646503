"""Content identity of a checkpoint: one sha256 of its tensors by name, whatever wrote them.

File hashes (the MANIFEST's `files`) name the exact bytes in storage, but the same weights written by
a different world size are split into different `.distcp` files, and DCP's `.metadata` records where
each chunk lies. The content identity hashes what the checkpoint *means* instead:

    tensor digest  = sha256( name \\0 dtype \\0 shape \\0 raw bytes, row-major, little-endian )
    content sha256 = sha256( "name digest\\n" for every tensor, names sorted )

computed over full (unsharded) tensors read back from storage, so it is independent of file layout,
world size, sharding, storage path and the order in which tensors were written. It is recorded in the
MANIFEST as `content` (see `manifest.build_manifest`):

    {"algorithm": "sha256/tensors-v1", "sha256": ..., "model": ..., "optim": ..., "numTensors": N,
     "tensors": {"model.layers.0.attention.w_q.weight": "<sha256>", ...}}

`model` and `optim` are the same construction over the `model.*` and `optim.*` tensors alone: a soup
(weights only) and a training checkpoint with the same weights share `model`. Non-tensor items of the
optimizer state (param-group hyperparameters, stored pickled) are not hashed: they come from the config,
whose hash is recorded beside. Per-tensor digests let `olmorun diff` name the tensor that differs.

A sharded job splits the read-back between its ranks (`digests_for_rank`): every rank hashes its share
of the tensors, rank 0 combines them (`content_record`). One full tensor at a time is in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.storage import StorageReader

ALGORITHM = "sha256/tensors-v1"
_BATCH_BYTES = 256 * 2**20
"""Tensors read back from storage per DCP load call (bounds memory; a larger tensor goes alone)."""


def tensor_digest(name: str, tensor: torch.Tensor) -> str:
    """sha256 of a tensor's name, dtype, shape and raw bytes (row-major, this machine's byte order:
    little-endian on every platform torch supports for training)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
    digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def combine(digests: Mapping[str, str]) -> str:
    """One sha256 over (name, digest) pairs in sorted name order."""
    lines = "".join(f"{name} {digests[name]}\n" for name in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def content_record(digests: Mapping[str, str]) -> dict[str, Any]:
    """The MANIFEST's `content` entry for per-tensor digests keyed `model.<fqn>` / `optim.<key>`."""

    def part(prefix: str) -> str | None:
        chosen = {k: v for k, v in digests.items() if k.startswith(prefix)}
        return combine(chosen) if chosen else None

    return {
        "algorithm": ALGORITHM,
        "sha256": combine(digests),
        "model": part("model."),
        "optim": part("optim."),
        "numTensors": len(digests),
        "tensors": dict(sorted(digests.items())),
    }


def digests_of(weights: Mapping[str, torch.Tensor], prefix: str = "model.") -> dict[str, str]:
    """Digests of in-memory full tensors, keyed `<prefix><name>` as DCP flattens them."""
    return {f"{prefix}{name}": tensor_digest(f"{prefix}{name}", t) for name, t in weights.items()}


def tensor_entries(metadata: Metadata) -> list[tuple[str, TensorStorageMetadata]]:
    """Every tensor item of a DCP checkpoint, sorted by its flattened key."""
    return sorted(
        (key, meta)
        for key, meta in metadata.state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata)
    )


def _nbytes(meta: TensorStorageMetadata) -> int:
    return meta.size.numel() * torch.empty((), dtype=meta.properties.dtype).element_size()


def share(entries: list[tuple[str, TensorStorageMetadata]], rank: int, world_size: int) -> list[str]:
    """The keys rank `rank` hashes: largest first, each to the rank with the fewest bytes so far
    (greedy balance), so that every rank reads about the same amount."""
    loads = [0] * world_size
    mine = []
    for key, meta in sorted(entries, key=lambda e: (-_nbytes(e[1]), e[0])):
        owner = min(range(world_size), key=lambda r: (loads[r], r))
        loads[owner] += _nbytes(meta)
        if owner == rank:
            mine.append(key)
    return mine


def _batches(keys: Iterable[str], sizes: Mapping[str, int]) -> Iterable[list[str]]:
    batch: list[str] = []
    total = 0
    for key in keys:
        if batch and total + sizes[key] > _BATCH_BYTES:
            yield batch
            batch, total = [], 0
        batch.append(key)
        total += sizes[key]
    if batch:
        yield batch


def digests_from_storage(
    reader: Callable[[], StorageReader], keys: list[str] | None = None
) -> dict[str, str]:
    """Read tensors back from a DCP checkpoint (all of them, or `keys`) and digest each one.

    `reader` makes a fresh StorageReader for every load call (DCP readers are single-use). Runs in this
    process alone (no collectives), so any subset of ranks may call it.
    """
    entries = dict(tensor_entries(reader().read_metadata()))
    wanted = sorted(entries) if keys is None else sorted(keys)
    sizes = {key: _nbytes(entries[key]) for key in wanted}
    digests: dict[str, str] = {}
    for batch in _batches(wanted, sizes):
        state = {key: torch.empty(entries[key].size, dtype=entries[key].properties.dtype) for key in batch}
        dcp.load(state, storage_reader=reader(), no_dist=True)
        digests.update({key: tensor_digest(key, state[key]) for key in batch})
    return digests


__all__ = [
    "ALGORITHM",
    "combine",
    "content_record",
    "digests_from_storage",
    "digests_of",
    "share",
    "tensor_digest",
    "tensor_entries",
]
