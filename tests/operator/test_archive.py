"""archive.py against a real SeaweedFS S3 server (credentials checked) and local filesystems."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import fsspec
import pytest

from olmo_operator import archive
from olmo_trainer import manifest as mf
from tests.dcp_files import dcp_metadata
from tests.s3server import S3Server

# Sizes straddle archive.PART_SIZE only in the multipart test (which lowers it), keeping this fast.
FILES = {
    "__0_0.distcp": 300_000,
    "__1_0.distcp": 200_001,
    "nested/optim/__0_0.distcp": 65_536,
    ".metadata": None,  # a real DCP index naming the .distcp files (tests/dcp_files.py)
    "empty.bin": 0,
}


def make_checkpoint(root: Path, step: int = 100, files: dict[str, int | None] | None = None) -> Path:
    """A committed `stepN/` of random plain files and the DCP `.metadata` naming its shards, like the
    trainer writes (no tensors needed)."""
    directory = root / f"step{step}"
    files = files or FILES
    shards = [rel for rel in files if rel.endswith(".distcp")]
    for rel, size in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dcp_metadata(shards) if size is None else secrets.token_bytes(size))
    fs = fsspec.filesystem("file")
    mf.commit(fs, str(directory), mf.build_manifest(fs, str(directory), step=step, config_hash="abc"))
    return directory


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    name = "t-" + request.node.name.lower().replace("_", "-")[:40] + "-" + secrets.token_hex(3)
    return s3_server.make_bucket(name)


def test_archive_to_s3_then_verify_ok(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path)
    dst = f"{bucket}/run/checkpoints/step100"
    opts = s3_server.storage_options()
    report = archive.archive_checkpoint(str(src), dst, dst_options=opts, workers=3)
    assert (report.copied, report.skipped, report.step) == (len(FILES), 0, 100)
    assert report.bytes == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and p.name != mf.MANIFEST_NAME
    )
    assert report.verified is False
    verified = archive.verify_checkpoint(dst, options=opts)
    assert verified.ok, verified.summary()
    assert verified.checked == len(FILES)
    # The MANIFEST travels byte for byte, and each object carries its sha256 as metadata.
    fs = s3_server.filesystem()
    assert fs.cat_file(f"{dst}/{mf.MANIFEST_NAME}") == (src / mf.MANIFEST_NAME).read_bytes()
    manifest = json.loads((src / mf.MANIFEST_NAME).read_text())
    head = s3_server.client().head_object(Bucket=bucket[5:], Key="run/checkpoints/step100/__0_0.distcp")
    assert head["Metadata"][archive.SHA256_METADATA] == manifest["files"]["__0_0.distcp"]["sha256"]
    # Idempotent: a rerun copies nothing and leaves the checkpoint valid.
    again = archive.archive_checkpoint(str(src), dst, dst_options=opts, verify_remote=True)
    assert (again.copied, again.skipped, again.bytes, again.verified) == (0, len(FILES), 0, True)
    assert archive.latest_checkpoint(f"{bucket}/run/checkpoints", options=opts) == (100, dst)


def test_multipart_upload_and_verify_remote(
    s3_server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 MiB is S3's smallest part: a 12 MiB file goes up in three parts.
    monkeypatch.setattr(archive, "PART_SIZE", 5 * 2**20)
    src = make_checkpoint(tmp_path, files={"big.distcp": 12 * 2**20 + 7, "small": 10, ".metadata": None})
    dst = f"{bucket}/step100"
    report = archive.archive_checkpoint(
        str(src), dst, dst_options=s3_server.storage_options(), verify_remote=True
    )
    assert (report.copied, report.verified) == (3, True)
    etag = s3_server.client().head_object(Bucket=bucket[5:], Key="step100/big.distcp")["ETag"]
    assert etag.strip('"').endswith("-3")  # really multipart, so the part path is what was tested
    assert archive.verify_checkpoint(dst, options=s3_server.storage_options()).ok


def test_corrupted_object_is_reported_and_rerun_repairs_it(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path)
    dst = f"{bucket}/step100"
    opts = s3_server.storage_options()
    archive.archive_checkpoint(str(src), dst, dst_options=opts)
    fs = s3_server.filesystem()
    # Same size, different bytes: only the hash can tell. And one file deleted.
    fs.pipe_file(f"{dst}/__1_0.distcp", secrets.token_bytes(FILES["__1_0.distcp"]))
    fs.rm_file(f"{dst}/.metadata")
    report = archive.verify_checkpoint(dst, options=opts, workers=2)
    assert report.committed and not report.ok
    assert report.corrupted == ["__1_0.distcp"]
    assert report.missing == [".metadata"]
    # The overwrite dropped the sha256 metadata, so a rerun uploads those two again and skips the rest.
    rerun = archive.archive_checkpoint(str(src), dst, dst_options=opts)
    assert (rerun.copied, rerun.skipped) == (2, len(FILES) - 2)
    assert archive.verify_checkpoint(dst, options=opts).ok


def test_corrupted_source_is_refused_and_dst_stays_uncommitted(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path)
    data = bytearray((src / "__0_0.distcp").read_bytes())
    data[1000] ^= 0xFF
    (src / "__0_0.distcp").write_bytes(bytes(data))
    (src / ".metadata").unlink()
    dst = f"{bucket}/step100"
    with pytest.raises(archive.CorruptSourceError) as caught:
        archive.archive_checkpoint(str(src), dst, dst_options=s3_server.storage_options())
    assert "__0_0.distcp sha256 differs" in str(caught.value)
    assert ".metadata is missing" in str(caught.value)
    fs = s3_server.filesystem()
    assert not fs.exists(f"{dst}/{mf.MANIFEST_NAME}")
    assert not fs.exists(f"{dst}/__0_0.distcp")  # the bad file never became an object
    assert not archive.verify_checkpoint(dst, options=s3_server.storage_options()).committed


def test_corrupt_multipart_source_is_aborted(
    s3_server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "PART_SIZE", 5 * 2**20)
    src = make_checkpoint(tmp_path, files={"big.distcp": 11 * 2**20})
    with (src / "big.distcp").open("r+b") as stream:  # the last part differs: found only after all uploads
        stream.seek(-1, os.SEEK_END)
        last = stream.read(1)
        stream.seek(-1, os.SEEK_END)
        stream.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(archive.CorruptSourceError, match=r"big\.distcp sha256 differs"):
        archive.archive_checkpoint(str(src), f"{bucket}/step100", dst_options=s3_server.storage_options())
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=bucket[5:]).get("KeyCount", 0) == 0
    assert not client.list_multipart_uploads(Bucket=bucket[5:]).get("Uploads")  # aborted, not left behind


def test_uncommitted_source_is_refused(tmp_path: Path) -> None:
    src = make_checkpoint(tmp_path)
    (src / mf.MANIFEST_NAME).unlink()
    with pytest.raises(archive.NotCommittedError, match="not a committed checkpoint"):
        archive.archive_checkpoint(str(src), str(tmp_path / "out"))
    with pytest.raises(archive.NotCommittedError, match=r"pass one, e\.g\. .*/step7"):
        archive.archive_checkpoint(str(make_checkpoint(tmp_path / "c", step=7).parent), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_different_checkpoint_at_dst_is_not_overwritten(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path / "a")
    second = make_checkpoint(tmp_path / "b")
    dst = tmp_path / "archive" / "step100"
    archive.archive_checkpoint(str(first), str(dst))
    with pytest.raises(archive.DestinationConflictError):
        archive.archive_checkpoint(str(second), str(dst))
    assert archive.verify_checkpoint(str(dst)).ok


@pytest.mark.parametrize("scheme", ["plain", "file"])
def test_local_destinations(tmp_path: Path, scheme: str) -> None:
    src = make_checkpoint(tmp_path / "scratch")
    target = tmp_path / "archive" / "checkpoints" / "step100"
    dst = str(target) if scheme == "plain" else f"file://{target}"
    report = archive.archive_checkpoint(str(src), dst, workers=2)
    assert report.copied == len(FILES)
    assert (target / "nested/optim/__0_0.distcp").read_bytes() == (
        src / "nested/optim/__0_0.distcp"
    ).read_bytes()
    assert archive.verify_checkpoint(dst).ok
    # A partial file (as a crash leaves) is replaced on rerun; the intact ones are skipped by re-hash.
    (target / mf.MANIFEST_NAME).unlink()
    (target / "__0_0.distcp").write_bytes(b"partial")
    assert not archive.verify_checkpoint(dst).committed
    rerun = archive.archive_checkpoint(str(src), dst)
    assert (rerun.copied, rerun.skipped) == (1, len(FILES) - 1)
    assert archive.verify_checkpoint(dst).ok
    parent = dst.rsplit("/", 1)[0]
    assert archive.latest_checkpoint(parent) == (100, dst)


def test_restore_from_s3_to_local(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    # The way back (a job resuming from the archive): S3 source, local destination, same checks.
    src = make_checkpoint(tmp_path / "scratch")
    archived = f"{bucket}/checkpoints/step100"
    archive.archive_checkpoint(str(src), archived, dst_options=s3_server.storage_options())
    restored = tmp_path / "restored" / "step100"
    report = archive.archive_checkpoint(archived, str(restored), src_options=s3_server.storage_options())
    assert report.copied == len(FILES)
    assert (restored / mf.MANIFEST_NAME).read_bytes() == (src / mf.MANIFEST_NAME).read_bytes()
    assert archive.verify_checkpoint(str(restored)).ok


def test_wrong_credentials_give_a_clean_error_without_the_secret(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    src = make_checkpoint(tmp_path)
    bad_secret = "wrong-" + secrets.token_urlsafe(16)
    opts: dict[str, Any] = {**s3_server.storage_options(), "secret": bad_secret}
    with pytest.raises(archive.StorageAccessError) as caught:
        archive.archive_checkpoint(str(src), f"{bucket}/step100", dst_options=opts)
    message = str(caught.value)
    assert "access denied" in message and bucket in message
    assert bad_secret not in message and s3_server.secret_key not in message
    with pytest.raises(archive.StorageAccessError):
        archive.verify_checkpoint(f"{bucket}/step100", options=opts)
    assert not s3_server.filesystem().exists(f"{bucket}/step100/{mf.MANIFEST_NAME}")


def test_storage_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_")):
            monkeypatch.delenv(name)
    assert archive.storage_options("s3://b/k") == {}
    assert archive.storage_options("/local/path") == {}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    assert archive.storage_options("s3://b/k") == {
        "key": "AK",
        "secret": "SK",
        "endpoint_url": "http://env:9000",
    }
    assert archive.storage_options("s3://b/k", endpoint_url="http://arg:1")["endpoint_url"] == "http://arg:1"
    monkeypatch.setenv("AWS_SESSION_TOKEN", "TOK")
    assert archive.storage_options("s3://b")["token"] == "TOK"
    assert archive.storage_options("file:///x") == {}
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/var/run/sa.json")
    assert archive.storage_options("gcs://b/k") == {"token": "/var/run/sa.json"}


def test_plan_copy_orders_largest_first_and_skips_present() -> None:
    files = {"a": {"size": 1}, "b": {"size": 30}, "c": {"size": 20}, "d": {"size": 30}}
    assert archive.plan_copy(files, lambda rel: rel == "c") == (["b", "d", "a"], ["c"])
    assert archive.plan_copy({}, lambda rel: True) == ([], [])


def test_size_check_after_upload_names_every_wrong_file() -> None:
    uploaded = {"a": {"size": 3}, "b": {"size": 5}, "c": {"size": 0}}
    archive._check_sizes("s3://b/step1", {"a": 3, "b": 5, "c": 0, "extra": 9}, uploaded)
    with pytest.raises(
        archive.ArchiveError, match=r"a \(2 bytes, expected 3\); c \(missing bytes, expected 0\)"
    ):
        archive._check_sizes("s3://b/step1", {"a": 2, "b": 5}, uploaded)
