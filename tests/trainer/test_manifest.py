"""The MANIFEST and `verify`: a damaged, incomplete or uncommitted checkpoint is never reported OK.

Every case runs on a real checkpoint saved by torch.distributed.checkpoint (two shard files, written
by the Checkpointer's own DCP writer class with two writer threads), committed by manifest.commit,
then damaged through fsspec: on the local disk here, and on the SeaweedFS S3 test server (which
checks credentials) in test_verify_on_s3. verify is the one implementation that soup, export-hf,
the archive and reconcile call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
import torch.distributed.checkpoint as dcp
from fsspec import AbstractFileSystem
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

from olmo_trainer import manifest
from olmo_trainer.storage import filesystem, is_local, sha256_file
from tests.dcp_files import dcp_metadata
from tests.s3server import S3Server

SHARDS = ["__0_0.distcp", "__0_1.distcp"]
"""What DCP writes for one process with two writer threads: one file per thread."""


def save_checkpoint(fs: AbstractFileSystem, directory: str, uri: str, **options: Any) -> dict[str, Any]:
    """A real two-shard DCP checkpoint plus a side file, committed by its MANIFEST; returns the record."""
    torch.manual_seed(0)
    state = {"model": {"w": torch.randn(64, 32), "b": torch.randn(32)}, "optim": {"m": torch.randn(64, 32)}}
    writer = FsspecWriter(uri, thread_count=2, **options)
    dcp.save(state, storage_writer=writer, no_dist=True)
    fs.pipe_file(f"{directory}/trainer.pt", b"trainer state")
    record = manifest.build_manifest(fs, directory, step=7, config_hash="cfg", parent="s3://p/step3")
    manifest.commit(fs, directory, record)
    return record


def recommit_without(fs: AbstractFileSystem, directory: str, *names: str) -> None:
    """Rewrite the MANIFEST so that it no longer lists `names` (the files stay)."""
    record = manifest.read_manifest(fs, directory)
    assert record is not None
    for name in names:
        del record["files"][name]
    manifest.commit(fs, directory, record)


def delete_and_rebuild(fs: AbstractFileSystem, directory: str, name: str) -> None:
    """A file never written (a writer died) and a MANIFEST built from what is there."""
    fs.rm_file(f"{directory}/{name}")
    manifest.commit(fs, directory, manifest.build_manifest(fs, directory, step=7))


def flip_a_byte(fs: AbstractFileSystem, directory: str, name: str) -> None:
    data = bytearray(fs.cat_file(f"{directory}/{name}"))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(f"{directory}/{name}", bytes(data))


Damage = Callable[[AbstractFileSystem, str], None]
EXPECTED_OK = {"missing": [], "corrupted": [], "unlisted": [], "incomplete": []}

# (damage, the report's lists: missing / corrupted / unlisted / incomplete)
CASES: dict[str, tuple[Damage, dict[str, list[str]]]] = {
    "intact": (lambda fs, d: None, {}),
    "listed-file-missing": (lambda fs, d: fs.rm_file(f"{d}/{SHARDS[1]}"), {"missing": [SHARDS[1]]}),
    "hash-differs-same-size": (lambda fs, d: flip_a_byte(fs, d, SHARDS[0]), {"corrupted": [SHARDS[0]]}),
    "size-differs": (
        lambda fs, d: fs.pipe_file(f"{d}/trainer.pt", b"trainer state, longer"),
        {"corrupted": ["trainer.pt"]},
    ),
    "file-not-in-manifest": (
        lambda fs, d: (
            fs.makedirs(f"{d}/notes", exist_ok=True),
            fs.pipe_file(f"{d}/notes/extra.bin", b"late"),
        ),
        {"unlisted": ["notes/extra.bin"]},
    ),
    "manifest-omits-a-side-file": (
        lambda fs, d: recommit_without(fs, d, "trainer.pt"),
        {"unlisted": ["trainer.pt"]},
    ),
    "manifest-omits-a-shard": (
        lambda fs, d: recommit_without(fs, d, SHARDS[0]),
        {"unlisted": [SHARDS[0]], "incomplete": [SHARDS[0]]},
    ),
    "manifest-omits-every-shard": (
        lambda fs, d: recommit_without(fs, d, *SHARDS),
        {"unlisted": SHARDS, "incomplete": SHARDS},
    ),
    "shard-never-written": (lambda fs, d: delete_and_rebuild(fs, d, SHARDS[1]), {"incomplete": [SHARDS[1]]}),
    "manifest-omits-dcp-metadata": (
        lambda fs, d: recommit_without(fs, d, manifest.DCP_METADATA),
        {"unlisted": [".metadata"], "incomplete": [".metadata"]},
    ),
    "dcp-metadata-never-written": (
        lambda fs, d: delete_and_rebuild(fs, d, manifest.DCP_METADATA),
        {"incomplete": [".metadata"]},
    ),
    "dcp-metadata-unreadable": (
        lambda fs, d: (
            fs.pipe_file(f"{d}/.metadata", b"not a pickle"),
            delete_and_rebuild(fs, d, "trainer.pt"),
        ),
        {"incomplete": [".metadata (unreadable)"]},
    ),
}


def check(fs: AbstractFileSystem, directory: str, case: str) -> None:
    damage, expected = CASES[case]
    damage(fs, directory)
    report = manifest.verify(fs, directory, uri="the-uri")
    lists = {key: getattr(report, key) for key in EXPECTED_OK}
    assert lists == {**EXPECTED_OK, **expected}
    assert report.committed
    assert report.ok is (case == "intact")
    listed = manifest.read_manifest(fs, directory)
    assert listed is not None and report.checked == len(listed["files"])
    if case == "intact":
        assert report.summary() == f"the-uri: OK ({report.checked} files verified)"
    else:
        assert report.summary().startswith("the-uri: FAILED (")


@pytest.mark.parametrize("case", list(CASES))
def test_verify_local(tmp_path: Path, case: str) -> None:
    fs = fsspec.filesystem("file")
    directory = str(tmp_path / "step7")
    record = save_checkpoint(fs, directory, directory)
    assert sorted(record["files"]) == [".metadata", *SHARDS, "trainer.pt"]
    check(fs, directory, case)


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> tuple[AbstractFileSystem, str, dict[str, Any]]:
    return s3_server.filesystem(), s3_server.make_bucket("verify-cases")[5:], s3_server.storage_options()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_verify_on_s3(s3: tuple[AbstractFileSystem, str, dict[str, Any]], case: str) -> None:
    fs, bucket, options = s3
    directory = f"{bucket}/{case}/step7"
    record = save_checkpoint(fs, directory, f"s3://{directory}", **options)
    assert sorted(record["files"]) == [".metadata", *SHARDS, "trainer.pt"]
    check(fs, directory, case)


def test_uncommitted_or_unreadable_manifest_is_not_committed(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    directory = str(tmp_path / "step7")
    save_checkpoint(fs, directory, directory)
    good = fs.cat_file(f"{directory}/{manifest.MANIFEST_NAME}")
    record = json.loads(good)
    for blob in (
        None,  # no MANIFEST at all
        b"{not json",
        b"\xff\xfe",
        json.dumps([record]).encode(),
        json.dumps({**record, "format": "olmorun.checkpoint/v0"}).encode(),
        json.dumps({k: v for k, v in record.items() if k != "format"}).encode(),
        json.dumps({**record, "files": ["trainer.pt"]}).encode(),
    ):
        if blob is None:
            fs.rm_file(f"{directory}/{manifest.MANIFEST_NAME}")
        else:
            fs.pipe_file(f"{directory}/{manifest.MANIFEST_NAME}", blob)
        assert manifest.read_manifest(fs, directory) is None
        report = manifest.verify(fs, directory)
        assert (report.committed, report.ok, report.checked) == (False, False, 0)
        assert report.summary() == f"{directory}: NOT COMMITTED (no valid MANIFEST.json)"
    fs.pipe_file(f"{directory}/{manifest.MANIFEST_NAME}", good)
    assert manifest.verify(fs, directory).ok


def test_summary_counts_every_kind_of_problem(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    directory = str(tmp_path / "step7")
    save_checkpoint(fs, directory, directory)
    recommit_without(fs, directory, SHARDS[0])
    fs.rm_file(f"{directory}/trainer.pt")
    flip_a_byte(fs, directory, SHARDS[1])
    report = manifest.verify(fs, directory, uri="u")
    assert report.summary() == (
        "u: FAILED (1 missing, 1 corrupted, 1 not in MANIFEST.json of 3 files; MANIFEST.json lacks "
        "__0_0.distcp)"
    )


# ---------------------------------------------------------------------------------------------
# The MANIFEST's format is pinned: readers (archive, soup, export, older releases) depend on it
# ---------------------------------------------------------------------------------------------


def test_manifest_keys_and_entries_are_pinned(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    directory = str(tmp_path / "step7")
    record = save_checkpoint(fs, directory, directory)
    assert manifest.FORMAT == "olmorun.checkpoint/v1"
    assert manifest.MANIFEST_NAME == "MANIFEST.json"
    assert set(record) == {"format", "step", "configHash", "parent", "createdAt", "files"}
    assert (record["format"], record["step"], record["configHash"], record["parent"]) == (
        "olmorun.checkpoint/v1",
        7,
        "cfg",
        "s3://p/step3",
    )
    assert record["files"]["trainer.pt"] == {
        "sha256": hashlib.sha256(b"trainer state").hexdigest(),
        "size": 13,
    }
    # What was written is the record, with sorted keys (the bytes archive copies verbatim).
    written = fs.cat_file(f"{directory}/{manifest.MANIFEST_NAME}")
    assert written == json.dumps(record, indent=2, sort_keys=True).encode()
    assert not fs.exists(f"{directory}/{manifest.MANIFEST_NAME}.tmp")
    with_extra = manifest.build_manifest(fs, directory, step=7, extra={"soupOf": ["a", "b"]})
    assert with_extra["extra"] == {"soupOf": ["a", "b"]}
    assert (with_extra["configHash"], with_extra["parent"]) == (None, None)


def test_sha256_of_a_known_file(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(fs, str(tmp_path / "f")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2, "abc"
    )


# ---------------------------------------------------------------------------------------------
# Reading a DCP index without torch, and without running anything in it
# ---------------------------------------------------------------------------------------------


def test_shard_names_of_a_real_index_and_of_the_test_stand_in(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    directory = str(tmp_path / "step7")
    save_checkpoint(fs, directory, directory)
    assert manifest.dcp_shard_names(fs.cat_file(f"{directory}/.metadata")) == set(SHARDS)
    assert manifest.dcp_shard_names(dcp_metadata(["b.distcp", "a/x.distcp", "b.distcp"])) == {
        "a/x.distcp",
        "b.distcp",
    }
    assert manifest.dcp_shard_names(dcp_metadata([])) == set()


class _Payload:
    """Pickles as a call of os.system: what loading an untrusted pickle with pickle.load would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "blob",
    [b"", b"not a pickle", pickle.dumps({"storage_data": {}}), pickle.dumps([1, 2]), b"\x80\x05K"],
    ids=["empty", "text", "plain-dict", "list", "truncated"],
)
def test_shard_names_refuse_what_is_no_dcp_index(blob: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a DCP \.metadata"):
        manifest.dcp_shard_names(blob)


def test_shard_names_run_no_code_of_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    blob = pickle.dumps({"payload": _Payload(marker)})
    with pytest.raises(ValueError, match="no storage_data"):
        manifest.dcp_shard_names(blob)
    assert not marker.exists()
    entry = pickle.dumps(_FakeMetadata({"k": _Payload(marker)}))
    with pytest.raises(ValueError, match="no relative_path"):
        manifest.dcp_shard_names(entry)
    assert not marker.exists()


class _FakeMetadata:
    """Shaped like DCP's Metadata (a storage_data dict) but with a payload as its entry."""

    def __init__(self, storage_data: dict[str, Any]) -> None:
        self.storage_data = storage_data


# ---------------------------------------------------------------------------------------------
# Paths given with a trailing slash, object stores (fsspec memory), step listings, content identity
# ---------------------------------------------------------------------------------------------


def test_every_function_takes_a_directory_with_a_trailing_slash_on_an_object_store() -> None:
    fs = fsspec.filesystem("memory")
    directory = f"/slash-{uuid.uuid4().hex}/run/checkpoints/step3"  # the memory filesystem is per process
    fs.pipe_file(f"{directory}/__0_0.distcp", b"shard")
    fs.pipe_file(f"{directory}/nested/x.bin", b"xx")
    fs.pipe_file(f"{directory}/.metadata", dcp_metadata(["__0_0.distcp"]))
    assert manifest.list_files(fs, directory + "/") == [".metadata", "__0_0.distcp", "nested/x.bin"]
    record = manifest.build_manifest(fs, directory + "/", step=3, content={"sha256": "c"})
    assert record["files"]["nested/x.bin"] == {"sha256": hashlib.sha256(b"xx").hexdigest(), "size": 2}
    assert record["content"] == {"sha256": "c"} and manifest.content_sha256(record) == "c"
    created = dt.datetime.fromisoformat(record["createdAt"])
    assert created.utcoffset() == dt.timedelta(0) and abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(
        minutes=5
    )
    manifest.commit(fs, directory + "/", record)
    assert (
        fs.cat_file(f"{directory}/{manifest.MANIFEST_NAME}")
        == json.dumps(record, indent=2, sort_keys=True).encode()
    )
    assert manifest.read_manifest(fs, directory + "/") == record
    report = manifest.verify(fs, directory + "/")
    assert report.ok and report.checked == 3, report
    fs.pipe_file(f"{directory}/late", b"!")
    assert manifest.verify(fs, directory + "/").unlisted == ["late"]
    checkpoints = directory.rsplit("/", 1)[0] + "/"
    assert manifest.step_dirs(fs, checkpoints) == [(3, f"{checkpoints}step3")]


def test_known_hashes_are_taken_as_given() -> None:
    """`known` entries (hashed by the rank that wrote the shard) are not read again."""
    fs = fsspec.filesystem("memory")
    directory = f"/known-{uuid.uuid4().hex}/step1"
    fs.pipe_file(f"{directory}/a", b"aaaa")
    fs.pipe_file(f"{directory}/b", b"bb")
    record = manifest.build_manifest(
        fs, directory, step=1, known={"a": {"sha256": "from-rank-3", "size": "4"}}
    )
    assert record["files"] == {
        "a": {"sha256": "from-rank-3", "size": 4},
        "b": {"sha256": hashlib.sha256(b"bb").hexdigest(), "size": 2},
    }


def test_step_listings_are_numeric_and_only_committed_ones_count(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    checkpoints = tmp_path / "checkpoints"
    for name in ("step2", "step10", "step1", "latest", "step5.tmp", "stepx"):
        (checkpoints / name).mkdir(parents=True)
    (checkpoints / "step3").write_text("a file, not a directory")
    for step in (1, 10):
        manifest.commit(
            fs,
            str(checkpoints / f"step{step}"),
            manifest.build_manifest(fs, str(checkpoints / f"step{step}"), step=step),
        )
    root = str(checkpoints)
    expected = [(1, f"{root}/step1"), (2, f"{root}/step2"), (10, f"{root}/step10")]
    assert manifest.step_dirs(fs, root) == expected
    assert manifest.step_dirs(fs, root + "/") == expected
    assert manifest.committed_steps(fs, root) == [expected[0], expected[2]]
    assert manifest.latest_committed(fs, root) == expected[2]
    assert manifest.step_dirs(fs, str(tmp_path / "absent")) == []
    assert manifest.latest_committed(fs, str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, None),
        ({}, None),
        ({"content": "x"}, None),
        ({"content": {}}, None),
        ({"content": {"sha256": "h"}}, "h"),
    ],
)
def test_content_sha256(record: dict[str, Any] | None, expected: str | None) -> None:
    assert manifest.content_sha256(record) == expected


def test_local_and_object_store_filesystems_are_told_apart(tmp_path: Path) -> None:
    local, _ = filesystem(str(tmp_path), auto_mkdir=True)
    assert local.auto_mkdir  # storage options reach the filesystem
    assert is_local(local) and is_local(fsspec.filesystem("local"))
    assert not is_local(fsspec.filesystem("memory"))

    class Named(fsspec.AbstractFileSystem):
        protocol = "local"

    assert is_local(Named())


def test_summary_lists_every_lacking_name(tmp_path: Path) -> None:
    report = manifest.VerifyReport(uri="u", committed=True, checked=2, incomplete=["a.distcp", "b.distcp"])
    assert (
        report.summary()
        == "u: FAILED (0 missing, 0 corrupted of 2 files; MANIFEST.json lacks a.distcp, b.distcp)"
    )
