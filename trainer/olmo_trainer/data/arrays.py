"""Token-array files: OLMo's headerless `.npy` (raw uint16/uint32, no numpy header), read by memmap.

A file is a flat run of token ids; documents are separated by EOS. Local paths are memory-mapped in
place. fsspec URLs (s3://, gs://, memory://, ...) are downloaded once into a local cache directory,
keyed by URL and size, and then memory-mapped, so random access never goes over the network.

    paths = expand_paths(["s3://bucket/dclm/*.npy"])
    tokens = open_tokens(paths[0], "uint32", cache_dir="/tmp/work/cache")   # np.memmap (N,)
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np

from olmo_trainer.errors import DataError, StorageError
from olmo_trainer.storage import filesystem, is_local, replacing


class DataNotFoundError(DataError):
    """A data location that matches no file. A DataError: the job cannot train on this config, so the
    trainer records it as InvalidConfig (failure.json) and the operator does not retry it."""


class TokenFileCutShort(StorageError):
    """A token file whose size is not a whole number of tokens: cut short (an upload still running, or
    killed midway) or written as another dtype. A StorageError: the job fails and is retried, since the
    file may be whole by then; a file that stays so fails every attempt, and the phase's backoff limit
    ends it."""


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Globs and directories -> files (each pattern sorted, so the order is stable); URLs keep their scheme.

    Raises DataNotFoundError for a pattern that matches no file."""
    out: list[str] = []
    for pattern in paths:
        fs, path = filesystem(pattern)
        if is_local(fs):
            local = fs._strip_protocol(path)
            found = sorted(glob.glob(local)) if _has_glob(local) else [local] if os.path.exists(local) else []
            found = [f for p in found for f in (_npy_in(p) if os.path.isdir(p) else [p])]
        else:
            if _has_glob(path):
                found = sorted(fs.glob(path))
            elif fs.isdir(path):
                found = sorted(p for p in fs.find(path) if str(p).endswith(".npy"))
            else:
                found = [path] if fs.exists(path) else []
            found = [fs.unstrip_protocol(p) for p in found]
        if not found:
            raise DataNotFoundError(f"no token files match {pattern!r}: check the data source's `paths`")
        out.extend(found)
    return out


def _npy_in(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "**", "*.npy"), recursive=True))


def local_copy(url: str, cache_dir: str) -> str:
    """A local path holding the bytes of `url`: the path itself if local, else a cached download."""
    fs, path = filesystem(url)
    if is_local(fs):
        return str(path)
    size = int(fs.size(path))
    key = hashlib.sha256(f"{url}\0{size}".encode()).hexdigest()[:20]
    target = os.path.join(cache_dir, f"{key}-{os.path.basename(path)}")
    if os.path.exists(target) and os.path.getsize(target) == size:
        return target
    # Download beside the target and rename: concurrent ranks on one node never read a partial file.
    with replacing(target) as partial:
        fs.get_file(path, partial)
    return target


def open_tokens(path: str, dtype: str, *, cache_dir: str) -> np.ndarray:
    """Memory-map a headerless token file (a remote one is cached locally first)."""
    local = local_copy(path, cache_dir)
    itemsize = np.dtype(dtype).itemsize
    size = os.path.getsize(local)
    if size % itemsize:
        raise TokenFileCutShort(
            f"{path}: {size} bytes is not a whole number of {dtype} tokens (cut short, or another dtype?)"
        )
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(local, dtype=dtype, mode="r")


def write_tokens(path: str, tokens: Iterable[int] | np.ndarray, dtype: str) -> int:
    """Write tokens as a headerless array of `dtype` (atomically); returns the number written."""
    array = np.asarray(tokens)
    limit = np.iinfo(np.dtype(dtype)).max
    if array.size and (array.min() < 0 or array.max() > limit):
        raise DataError(f"token ids outside 0..{limit} cannot be stored as {dtype}")
    with replacing(path) as partial, open(partial, "wb") as f:
        f.write(array.astype(dtype, copy=False).tobytes())
    return int(array.size)


def smallest_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary (uint16 below 65536)."""
    return "uint16" if vocab_size <= 2**16 else "uint32"
