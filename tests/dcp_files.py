"""Checkpoint directories for tests and benchmarks that need files, not tensors.

`manifest.verify` checks that a MANIFEST lists the DCP `.metadata` and every shard file it names, so
a stand-in checkpoint of random bytes still needs a real `.metadata`. This one is torch's own
`Metadata` with one `_StorageInfo` per shard, pickled as torch's FileSystemWriter writes it
(torch/distributed/checkpoint/filesystem.py `_write_metadata`); the shards themselves stay opaque
bytes, which is all that archiving and verifying look at.

    fs.pipe_file(f"{step_dir}/.metadata", dcp_metadata(["__0_0.distcp"]))
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable


def dcp_metadata(shards: Iterable[str]) -> bytes:
    """The bytes of a DCP `.metadata` whose storage entries name `shards` (one opaque entry each)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex

    names = sorted(set(shards))
    metadata = Metadata(
        state_dict_metadata={f"blob{i}": BytesStorageMetadata() for i in range(len(names))},
        storage_data={MetadataIndex(f"blob{i}"): _StorageInfo(name, 0, 0) for i, name in enumerate(names)},
    )
    return pickle.dumps(metadata)
