"""The S3 test server itself: it checks credentials, and a server that cannot start fails loudly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs

from tests import s3server
from tests.s3server import S3Server


def test_server_checks_credentials(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("auth-check")
    s3_server.filesystem().pipe_file(f"{bucket[5:]}/k", b"v")
    wrong = s3fs.S3FileSystem(
        key=s3_server.access_key,
        secret="wrong",
        endpoint_url=s3_server.endpoint_url,
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError):
        wrong.cat_file(f"{bucket[5:]}/k")
    anonymous = s3fs.S3FileSystem(anon=True, endpoint_url=s3_server.endpoint_url, skip_instance_cache=True)
    with pytest.raises(PermissionError):
        anonymous.cat_file(f"{bucket[5:]}/k")


def test_a_server_that_cannot_start_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3server, "weed_binary", lambda: "/bin/false")
    with pytest.raises(RuntimeError, match="exited with 1"):
        S3Server.start(tmp_path)


def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    # A parent killed with SIGKILL runs no cleanup; the server must still go away.
    code = (
        "import sys, time; from pathlib import Path; from tests.s3server import S3Server\n"
        f"server = S3Server.start(Path({str(tmp_path)!r}))\n"
        "print(server.process.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    orphaned = _alive(pid)
    if orphaned:  # do not leave it running on a shared machine
        os.kill(pid, signal.SIGKILL)
    assert not orphaned, "weed outlived its parent"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    state = (
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if Path(f"/proc/{pid}").exists()
        else "X"
    )
    return state not in ("Z", "X")
