"""A write that fails midway leaves no orphan multipart parts and no partial object (SeaweedFS).

Faults are injected where the network would fail: the s3fs client's one door to the server
(`S3FileSystem._call_s3`) raises botocore's EndpointConnectionError for the chosen call, and every
other call goes through to the real server. A process killed outright cannot abort its upload; that
is what the bucket lifecycle rule in docs/reliability.md is for.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import s3fs
import torch
import torch.distributed.checkpoint as dcp
from fsspec.asyn import sync_wrapper
from torch.distributed.checkpoint.api import CheckpointException

from olmo_operator import archive
from olmo_trainer.checkpoint.io import storage_writer
from olmo_trainer.storage import filesystem, open_output
from tests.operator.test_archive import make_checkpoint
from tests.s3server import S3Server

PART = 5 * 2**20  # S3's smallest part


def fail_s3_call(monkeypatch: pytest.MonkeyPatch, when: Callable[[str, dict[str, Any]], bool]) -> list[str]:
    """Make the s3fs call for which `when(method, kwargs)` holds fail as an unreachable endpoint would;
    returns the list of every call made (method names), for the test to read."""
    real = s3fs.S3FileSystem._call_s3
    calls: list[str] = []

    async def call(self: s3fs.S3FileSystem, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if when(method, kwargs):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1/injected")
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call)
    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", sync_wrapper(call))  # bound to the original otherwise
    return calls


def nth(method: str, n: int, *, onwards: bool = False) -> Callable[[str, dict[str, Any]], bool]:
    """True for the n-th call (1-based) of `method`, and with `onwards` for every later one too (the
    endpoint went away and stays away)."""
    seen = 0

    def match(name: str, _kwargs: dict[str, Any]) -> bool:
        nonlocal seen
        if name != method:
            return False
        seen += 1
        return seen == n or (onwards and seen > n)

    return match


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    yield s3_server.make_bucket("mpu-" + secrets.token_hex(4))


def _orphans(server: S3Server, bucket: str) -> list[Any]:
    return list(
        server.client().list_multipart_uploads(Bucket=bucket.removeprefix("s3://")).get("Uploads") or []
    )


def _objects(server: S3Server, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket.removeprefix("s3://"))
    return [item["Key"] for item in listing.get("Contents", [])]


def test_a_failed_part_of_an_archive_upload_is_aborted(
    s3_server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "PART_SIZE", PART)
    src = make_checkpoint(tmp_path, files={"big.distcp": 3 * PART + 11, ".metadata": None})
    dst = f"{bucket}/step100"
    calls = fail_s3_call(monkeypatch, nth("upload_part", 2))
    with pytest.raises(archive.StorageAccessError, match="EndpointConnectionError"):
        archive.archive_checkpoint(str(src), dst, dst_options=s3_server.storage_options(), workers=1)
    assert "create_multipart_upload" in calls and "abort_multipart_upload" in calls
    assert _orphans(s3_server, bucket) == []
    assert "step100/big.distcp" not in _objects(s3_server, bucket)
    assert "step100/MANIFEST.json" not in _objects(s3_server, bucket)
    monkeypatch.undo()
    monkeypatch.setattr(archive, "PART_SIZE", PART)
    report = archive.archive_checkpoint(str(src), dst, dst_options=s3_server.storage_options())
    assert report.copied == 1 and archive.verify_checkpoint(dst, options=s3_server.storage_options()).ok


def test_fsspec_alone_would_commit_a_partial_object(s3_server: S3Server, bucket: str) -> None:
    """Why open_output exists: fsspec's `with fs.open(...)` completes the upload when the block raises."""
    fs = s3_server.filesystem()
    path = f"{bucket.removeprefix('s3://')}/partial.bin"
    with pytest.raises(RuntimeError), fs.open(path, "wb", block_size=PART) as stream:
        stream.write(secrets.token_bytes(2 * PART + 1))
        raise RuntimeError("the writer fails after two parts went up")
    assert fs.size(path) == 2 * PART + 1  # a truncated object became visible


@pytest.mark.parametrize("fault", ["the writer raises", "a part upload fails"])
def test_open_output_leaves_no_object_and_no_parts(
    s3_server: S3Server, bucket: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = s3_server.filesystem()
    path = f"{bucket.removeprefix('s3://')}/shard.distcp"
    if fault == "a part upload fails":
        fail_s3_call(monkeypatch, nth("upload_part", 2))
    failed = (RuntimeError, botocore.exceptions.EndpointConnectionError)
    with pytest.raises(failed), open_output(fs, path, block_size=PART) as stream:
        for _ in range(3):
            stream.write(secrets.token_bytes(PART))  # a part goes up once the buffer holds one
        raise RuntimeError("the writer fails after its parts went up")
    monkeypatch.undo()
    assert _orphans(s3_server, bucket) == []
    assert _objects(s3_server, bucket) == []


def test_a_local_partial_file_is_removed(tmp_path: Path) -> None:
    fs, path = filesystem(str(tmp_path / "shard.distcp"))
    with pytest.raises(RuntimeError), open_output(fs, path) as stream:
        stream.write(b"half a shard")
        raise RuntimeError("disk full")
    assert not (tmp_path / "shard.distcp").exists()


def test_a_dcp_shard_upload_that_fails_is_aborted(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's checkpoint writer (checkpoint/io.py storage_writer, DCP's FsspecWriter) on a network
    fault in the middle of a multipart shard: the save fails, and the bucket keeps no parts and no partial
    shard."""
    options = s3_server.storage_options()
    uri = f"{bucket}/run/checkpoints/step1"
    state = {"weights": torch.arange(3 * PART // 4 + 5, dtype=torch.float32)}  # ~15 MiB: multipart
    monkeypatch.setattr(s3fs.S3FileSystem, "default_block_size", PART)  # DCP opens shards with the default
    fail_s3_call(monkeypatch, nth("upload_part", 2))
    with pytest.raises(CheckpointException):  # DCP's wrapper of the rank's EndpointConnectionError
        dcp.save(state, storage_writer=storage_writer(uri, options), no_dist=True)
    monkeypatch.undo()
    assert _orphans(s3_server, bucket) == []
    assert not [key for key in _objects(s3_server, bucket) if key.endswith(".distcp")]


def test_the_documented_lifecycle_rule_is_accepted(s3_server: S3Server, bucket: str) -> None:
    """The JSON of docs/reliability.md, exactly as written there, set on a bucket and read back."""
    text = (Path(__file__).parents[2] / "docs" / "reliability.md").read_text()
    section = text[text.index("### Bucket lifecycle rule") :]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None, "docs/reliability.md: no JSON block in the lifecycle section"
    rule = json.loads(block.group(1))
    client = s3_server.client()
    name = bucket.removeprefix("s3://")
    client.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=rule)
    [stored] = client.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert stored["Status"] == "Enabled" and stored["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 1
    }
