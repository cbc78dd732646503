"""`olmorun verify` names a damaged object and what is wrong with it, on file:// and on s3:// (SeaweedFS).

A committed checkpoint (tests/operator/test_archive.make_checkpoint: random shards and a real DCP
`.metadata`) is archived to each storage with archive.py, then one object is damaged the way storage
damages things: deleted, cut short, or one bit flipped in place (same size: only the hash can tell).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from olmo_operator import archive, cli
from tests.operator.test_archive import make_checkpoint
from tests.s3server import S3Server

SHARD = "__0_0.distcp"  # 300_000 bytes in make_checkpoint's FILES


def _missing(fs: Any, path: str) -> None:
    fs.rm_file(path)


def _truncated(fs: Any, path: str) -> None:
    fs.pipe_file(path, bytes(fs.cat_file(path))[:1000])


def _bit_flipped(fs: Any, path: str) -> None:
    data = bytearray(fs.cat_file(path))
    data[123_456] ^= 0x10
    fs.pipe_file(path, bytes(data))


DAMAGE: dict[str, tuple[Callable[[Any, str], None], str, str]] = {
    # damage, the list it lands in, what the output says is wrong
    "missing": (_missing, "missing", "not found"),
    "truncated": (_truncated, "corrupted", "truncated: 1000 of 300000 bytes"),
    "bit-flipped": (_bit_flipped, "corrupted", "sha256 differs from MANIFEST (same size"),
}


@pytest.fixture(params=["file", "s3"])
def destination(
    request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Any]:
    """(checkpoint URI, an fsspec filesystem and path prefix to damage it with) on each storage."""
    src = make_checkpoint(tmp_path / "src")
    if request.param == "file":
        import fsspec

        uri = (tmp_path / "archive" / "step100").as_uri()
        archive.archive_checkpoint(str(src), uri)
        return uri, (fsspec.filesystem("file"), str(tmp_path / "archive" / "step100"))
    for name, value in s3_server.env().items():  # `olmorun verify` reads credentials from the environment
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket("verify-" + secrets.token_hex(4))
    uri = f"{bucket}/run/archive/pretrain/step100"
    archive.archive_checkpoint(str(src), uri)
    return uri, (s3_server.filesystem(), uri.removeprefix("s3://"))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_names_the_damaged_object_and_what_is_wrong(
    destination: tuple[str, Any], damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, (fs, path) = destination
    assert cli.main(["verify", uri]) == 0
    capsys.readouterr()
    hurt, listed, words = DAMAGE[damage]
    hurt(fs, f"{path}/{SHARD}")

    code = cli.main(["verify", uri])
    out = capsys.readouterr().out
    assert code == 1
    kind = "missing  " if listed == "missing" else "corrupted"
    line = next(line for line in out.splitlines() if SHARD in line)
    assert line.startswith(f"  {kind}  {SHARD}: {words}"), out
    assert f"{uri}/{SHARD}" in line  # the object's full URI, to find it in the bucket

    assert cli.main(["verify", uri, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report[listed] == [SHARD] and report["ok"] is False
    assert report["problems"][f"{uri}/{SHARD}"].startswith(words)
