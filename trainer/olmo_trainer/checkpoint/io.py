"""Checkpoint I/O: DCP shards written and read through storage.py, the side files, one-off loads.

What a checkpoint directory holds and how it is written and read, with no policy and no fencing: the
DCP writers (no random save id, shards discarded on error), the readers behind safe_load.py's
allow-lists, trainer.pt and config.json, and the functions on one committed checkpoint that init_from,
soups, export and evaluation use (`load_model_weights`, `load_full_state_dict`, `save_model_weights`,
`read_trainer_state`, `read_train_config`). The Checkpointer (checkpointer.py) drives these for a job.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Generator, Sequence
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from fsspec import AbstractFileSystem
from torch import nn
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

from olmo_trainer import identity, manifest, safe_load, storage
from olmo_trainer.checkpoint.collective import single_process
from olmo_trainer.config import TrainConfig
from olmo_trainer.errors import CheckpointError
from olmo_trainer.failure import PermanentFailure
from olmo_trainer.layout import CONFIG_NAME, TRAINER_NAME, manifest_path
from olmo_trainer.lease import Lease

MODEL_KEY = "model"
OPTIM_KEY = "optim"

UNSAFE_CHECKPOINT_REASON = "UnsafeCheckpoint"
"""failure.json reason of a job whose checkpoint (trainer.pt, DCP's .metadata or bytes items) names
something outside the allow-lists of safe_load.py."""


def trainer_state_for_rank(saved: dict[str, Any], rank: int) -> dict[str, Any]:
    """The trainer state a rank resumes with; on a world-size change rank r takes rank r % W's."""
    states = saved["ranks"]
    return states[rank % len(states)]


class _ReproducibleFileSystemWriter(dcp.FileSystemWriter):
    """DCP's writer without its observability record: `storage_meta()` (a public StorageWriter hook,
    "None by default") would put a random save_id and the absolute checkpoint path into `.metadata`,
    so that two identical saves never had identical files. Without it `.metadata` is a function of
    the saved state and the world size alone."""

    def storage_meta(self) -> StorageMeta | None:
        return None


class _DiscardingFileSystem(FileSystem):
    """DCP's fsspec file system, with each shard written through storage.open_output: DCP's own stream
    removes a failed file and then lets fsspec commit it (a truncated object, or orphan upload parts);
    this one aborts the upload instead."""

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        if "w" not in mode or self.fs is None:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with storage.open_output(self.fs, os.fspath(path)) as stream:
            yield stream


class _ReproducibleFsspecWriter(FsspecWriter):
    """FsspecWriter (s3://, gs://) without the random save_id and path (see _ReproducibleFileSystemWriter),
    writing shards through _DiscardingFileSystem."""

    def __init__(self, path: str, **storage_options: Any) -> None:
        super().__init__(path, **storage_options)
        discarding = _DiscardingFileSystem()
        discarding.init_path(path, **storage_options)  # the same cached fsspec filesystem as FsspecWriter's
        # FileSystemWriter annotates `fs` with its local FileSystem; FsspecWriter, too, puts its own there.
        self.fs = discarding  # type: ignore[assignment]

    def storage_meta(self) -> StorageMeta | None:
        return None


def remove_tree(fs: AbstractFileSystem, path: str) -> None:
    """Delete a directory and everything in it, leaving no folder entry behind.

    On object stores a "directory" can outlive its objects: a zero-byte `path/` marker object, or an
    empty folder kept by a filer-backed server (SeaweedFS). Left there, it lists as a step directory
    without a MANIFEST, which every restart would report as a crashed save.
    """
    if fs.exists(path):
        fs.rm(path, recursive=True)
    if not storage.is_local(fs):
        with contextlib.suppress(FileNotFoundError):  # deleting a missing key is a no-op on S3 anyway
            fs.rm_file(path.rstrip("/") + "/")  # the marker key itself
        fs.invalidate_cache(path)


def has_files(fs: AbstractFileSystem, path: str) -> bool:
    """True when anything but the directory's own marker is under `path`."""
    own = path.rstrip("/")
    return any(str(found).rstrip("/") != own for found in fs.find(path))


def storage_writer(uri: str, storage_options: dict[str, Any]) -> StorageWriter:
    fs, path = storage.filesystem(uri, **storage_options)
    if storage.is_local(fs):
        return _ReproducibleFileSystemWriter(path)
    return _ReproducibleFsspecWriter(uri, **storage_options)


def storage_reader(uri: str, storage_options: dict[str, Any]) -> StorageReader:
    """DCP's reader of `uri`, reading its `.metadata` through an allow-list (safe_load.py)."""
    fs, path = storage.filesystem(uri, **storage_options)
    if storage.is_local(fs):
        return safe_load.SafeFileSystemReader(path)
    return safe_load.SafeFsspecReader(uri, **storage_options)


def hash_own_shards(fs: AbstractFileSystem, path: str, rank: int) -> dict[str, dict[str, Any]]:
    """MANIFEST entries of the shard files this rank wrote (DCP names them `__<rank>_<n>.distcp`).

    Every rank hashes its own shards in parallel; rank 0 hashes whatever is left (metadata, side files).
    """
    prefix = f"__{rank}_"
    entries = {}
    for name in fs.ls(path, detail=False):
        rel = str(name).rstrip("/").rsplit("/", 1)[-1]
        if rel.startswith(prefix) and rel.endswith(".distcp"):
            entries[rel] = {"sha256": storage.sha256_file(fs, str(name)), "size": int(fs.size(str(name)))}
    return entries


def dcp_load(uri: str, state: dict[str, Any], reader: StorageReader, *, no_dist: bool = False) -> None:
    """dcp.load, with its failures (a BaseException carrying every rank's error) as a CheckpointError;
    non-tensor items are read with the weights-only unpickler (safe_load.SafeLoadPlanner)."""
    try:
        reader.read_metadata()  # DCP reports a refused index only as "metadata is None": read it here first
        with single_process():
            dcp.load(state, storage_reader=reader, planner=safe_load.SafeLoadPlanner(), no_dist=no_dist)
    except safe_load.UnsafeCheckpointError as error:
        raise unsafe(uri, error) from None
    except CheckpointException as error:
        unsafe_ones = [
            exc for exc, _ in error.failures.values() if isinstance(exc, safe_load.UnsafeCheckpointError)
        ]
        if unsafe_ones:
            raise unsafe(uri, unsafe_ones[0]) from None
        reasons = sorted({f"{type(exc).__name__}: {exc}" for exc, _ in error.failures.values()})
        raise CheckpointError(f"cannot load {uri}: {'; '.join(reasons)}") from None


def require_committed(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    fs, path = storage.filesystem(uri, **storage_options)
    found = manifest.read_manifest(fs, path)
    if found is None:
        raise CheckpointError(f"{uri} is not a committed checkpoint (no valid {manifest.MANIFEST_NAME})")
    return found


def unsafe(uri: str, error: BaseException) -> PermanentFailure:
    """The failure of a job whose checkpoint names something outside the allow-lists (safe_load.py):
    retrying would read the same bytes."""
    return PermanentFailure(
        UNSAFE_CHECKPOINT_REASON,
        f"{uri} names something a checkpoint never holds ({safe_load.refusal(error)[:300]}); it was not "
        "loaded (loading it could run code). Restore the checkpoint from the archive or delete it",
    )


def dcp_metadata(uri: str, storage_options: dict[str, Any]) -> Any:
    """DCP's index of `uri` (read through the allow-list; PermanentFailure UnsafeCheckpoint otherwise)."""
    try:
        return storage_reader(uri, storage_options).read_metadata()
    except safe_load.UnsafeCheckpointError as error:
        raise unsafe(uri, error) from None


def saved_keys(uri: str, storage_options: dict[str, Any]) -> set[str]:
    return set(dcp_metadata(uri, storage_options).state_dict_metadata)


def read_trainer_file(
    uri: str, storage_options: dict[str, Any], allowed: Sequence[Any] = ()
) -> dict[str, Any]:
    """trainer.pt, unpickled with torch's weights-only unpickler and `trainer_file_globals(allowed)`
    (`allowed`: the classes the job's step source keeps, objectives.TRAINER_STATE_TYPES): a file in
    storage never runs code here. Raises PermanentFailure(UnsafeCheckpoint) for anything else it names
    (a pickled callable, an unknown class): retrying would read the same bytes."""
    fs, path = storage.filesystem(uri, **storage_options)
    target = f"{path}/{TRAINER_NAME}"
    if not fs.exists(target):
        raise CheckpointError(f"{uri} has no trainer state ({TRAINER_NAME}); it is a weights-only checkpoint")
    with (
        fs.open(target, "rb") as stream,
        torch.serialization.safe_globals(safe_load.trainer_file_globals(allowed)),
    ):
        try:
            saved: dict[str, Any] = torch.load(stream, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise unsafe(f"{uri}/{TRAINER_NAME}", error) from None
    return saved


def load_model_weights(
    uri: str,
    model: nn.Module,
    *,
    storage_options: dict[str, Any] | None = None,
    skip_mismatched: bool = False,
) -> None:
    """Load only the model weights of a committed checkpoint into `model` (collective when
    distributed; works for plain, DDP and FSDP2 models of any world size). `skip_mismatched` leaves
    the model's own values where the checkpoint has no weight of that name and shape (a value model
    initialised from a policy: every weight but the head)."""
    options = dict(storage_options or {})
    require_committed(uri, options)
    wanted = get_model_state_dict(model)
    if skip_mismatched:
        saved = dcp_metadata(uri, options).state_dict_metadata
        wanted = {
            key: value
            for key, value in wanted.items()
            if isinstance(meta := saved.get(f"{MODEL_KEY}.{key}"), TensorStorageMetadata)
            and isinstance(value, torch.Tensor)
            and tuple(meta.size) == tuple(value.shape)
        }
    state = {MODEL_KEY: wanted}
    dcp_load(uri, state, storage_reader(uri, options))
    set_model_state_dict(model, state[MODEL_KEY], options=StateDictOptions(strict=not skip_mismatched))


def read_trainer_state(
    uri: str, *, storage_options: dict[str, Any] | None = None, allowed: Sequence[Any] = ()
) -> dict[str, Any]:
    """The trainer state rank 0 saved (step, tokens, last LR, ...); no model needed. `allowed`: the
    classes its step source may keep (read_trainer_file)."""
    options = dict(storage_options or {})
    require_committed(uri, options)
    return trainer_state_for_rank(read_trainer_file(uri, options, allowed), 0)


def read_train_config(uri: str, *, storage_options: dict[str, Any] | None = None) -> TrainConfig | None:
    """The TrainConfig recorded in a checkpoint's config.json, or None when it has none."""
    fs, path = storage.filesystem(uri, **(storage_options or {}))
    try:
        blob = fs.cat_file(f"{path}/{CONFIG_NAME}")
    except FileNotFoundError:
        return None
    return TrainConfig.model_validate_json(blob)


def load_full_state_dict(
    uri: str, *, storage_options: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """All model weights of a committed checkpoint, consolidated in this process (CPU tensors)."""
    options = dict(storage_options or {})
    require_committed(uri, options)
    metadata = dcp_metadata(uri, options)
    prefix = f"{MODEL_KEY}."
    weights = {
        key[len(prefix) :]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not weights:
        raise CheckpointError(f"{uri} holds no model weights")
    state: dict[str, Any] = {MODEL_KEY: weights}
    dcp_load(uri, state, storage_reader(uri, options), no_dist=True)
    return state[MODEL_KEY]


def save_model_weights(
    uri: str,
    weights: dict[str, torch.Tensor],
    *,
    step: int,
    config_hash: str | None = None,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
    config_json: str | None = None,
    storage_options: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> str:
    """Write and commit a weights-only checkpoint from one process (soups). Refuses to overwrite.

    With the job's `lease`, checks it before deleting a crashed attempt's files and right before the
    commit (raises lease.Fenced)."""
    options = dict(storage_options or {})
    fs, path = storage.filesystem(uri, **options)
    if manifest.read_manifest(fs, path) is not None:
        raise CheckpointError(f"{uri} is already a committed checkpoint; refusing to overwrite it")
    if lease is not None:
        lease.check(f"save of {uri}")
    remove_tree(fs, path)
    fs.makedirs(path, exist_ok=True)
    if config_json is not None:
        fs.pipe_file(f"{path}/{CONFIG_NAME}", config_json.encode())
    with single_process():
        dcp.save({MODEL_KEY: weights}, storage_writer=storage_writer(uri, options), no_dist=True)
    content = identity.content_record(identity.digests_of(weights, f"{MODEL_KEY}."))
    record = manifest.build_manifest(
        fs, path, step=step, config_hash=config_hash, parent=parent, extra=extra, content=content
    )
    if lease is not None:
        lease.check(f"commit of {uri}")
    manifest.commit(fs, path, record)
    return uri


def manifest_sha256(uri: str, *, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 of a checkpoint's MANIFEST.json bytes: names one exact committed checkpoint."""
    fs, path = storage.filesystem(uri, **(storage_options or {}))
    return storage.sha256_file(fs, manifest_path(path))


def config_json_of(uri: str, *, storage_options: dict[str, Any] | None = None) -> str | None:
    """The raw config.json of a checkpoint, or None."""
    fs, path = storage.filesystem(uri, **(storage_options or {}))
    try:
        return bytes(fs.cat_file(f"{path}/{CONFIG_NAME}")).decode()
    except FileNotFoundError:
        return None
