"""Reading a checkpoint never runs code from storage: what each pickled file of a checkpoint may name.

A checkpoint holds three kinds of pickles, all unpickled here under an allow-list instead of Python's
pickle (which calls whatever a file names: `os.system` through `__reduce__`, for one):

    trainer.pt       torch.load(weights_only=True) with the globals of trainer_file_globals
    .metadata        DCP's index: SafeFileSystemReader / SafeFsspecReader (torch reads it with pickle.load)
    bytes items      DCP's non-tensor values (the optimizer's param_groups): SafeLoadPlanner.load_bytes
                     with weights_only=True (torch's DefaultLoadPlanner uses weights_only=False)

Tensors themselves DCP already reads with weights_only=True. A file naming anything else raises
UnsafeCheckpointError (a pickle.UnpicklingError) before anything it names is called.

    reader = SafeFileSystemReader(path)                 # or SafeFsspecReader(uri, **options)
    dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A pickled file of a checkpoint names something outside its allow-list; nothing was called."""


def refusal(error: BaseException) -> str:
    """The sentence of an unpickling error that names what was refused (torch's weights-only message is
    paragraphs of advice around one line naming the global)."""
    parts = [part.strip() for part in str(error).split("\n\n") if part.strip()]
    return next((p for p in parts if "global" in p.lower()), parts[-1] if parts else type(error).__name__)


def trainer_file_globals(extra: Sequence[Any] = ()) -> list[Any]:
    """Everything trainer.pt may name besides tensors and plain containers: numpy's RNG state (an
    ndarray of uint32, numpy.random.get_state), plus `extra`, the classes a job's step source keeps in
    its state, which the caller names (objectives.TRAINER_STATE_TYPES: an RL job's cached rollout).
    Classes only, never a callable that acts on load; a `(class, "module.Name")` pair allows a class
    under the name an older file gives it."""
    reconstruct = importlib.import_module("numpy._core.multiarray")._reconstruct  # how an ndarray pickles
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), *extra]


_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
"""Where DCP's own record types live: only the dataclasses and enums defined there are allowed (they
unpickle by setting fields), not whatever else those modules define or import (readers, writers)."""
_METADATA_NAMES = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
}
"""torch.Size, a layout looked up by name (torch.serialization._get_layout: one of torch's layout objects),
OrderedDict, and the path DCP's own writer records in its StorageMeta (ours records none)."""


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` as Python's pickle would read it, but naming only DCP's record classes, torch
    dtypes, torch.Size and layouts."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_NAMES:
            return getattr(importlib.import_module(module), name)
        if module in _METADATA_MODULES:
            found = getattr(importlib.import_module(module), name, None)
            record = dataclasses.is_dataclass(found) or (
                isinstance(found, type) and issubclass(found, enum.Enum)
            )
            if isinstance(found, type) and found.__module__ == module and record:
                return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"DCP .metadata names {module}.{name}, which a checkpoint index never holds"
        )


def read_dcp_metadata(stream: Any) -> Metadata:
    """DCP's index from an open binary stream, through the allow-list (raises UnsafeCheckpointError)."""
    metadata = _MetadataUnpickler(stream).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"DCP .metadata holds a {type(metadata).__name__}, not a Metadata")
    return metadata


def _read_metadata(reader: FileSystemReader, rank: int | None) -> Metadata:
    """FileSystemReader.read_metadata (torch 2.13, filesystem.py) with the allow-list in place of
    pickle.load."""
    with reader.fs.create_stream(reader._get_metadata_path(rank), "rb") as stream:
        metadata = read_dcp_metadata(stream)
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    assert metadata.storage_meta is not None
    metadata.storage_meta.load_id = reader.load_id
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """dcp.FileSystemReader whose `.metadata` is read through the allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return _read_metadata(self, kwargs.get("rank"))


class SafeFsspecReader(FsspecReader):
    """DCP's FsspecReader (s3://, gs://) whose `.metadata` is read through the allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return _read_metadata(self, kwargs.get("rank"))


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner (torch 2.13, default_planner.py), reading non-tensor items with torch's
    weights-only unpickler instead of weights_only=False."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as error:
            raise UnsafeCheckpointError(f"item {read_item.dest_index.fqn}: {refusal(error)}") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
