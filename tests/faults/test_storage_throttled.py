"""A burst of `503 SlowDown` answers during the final archive stays transient (issue 26 #5).

The storage is a real S3 server (SeaweedFS) behind a small fault-injecting proxy on 127.0.0.1
(tests/faults/s3_fault_proxy.py): every request goes through, except a burst of 50 that the proxy
answers `503 SlowDown` with S3's own error document, as AWS answers a client it throttles. The
Reconciler (the step the kopf handlers and `olmorun local` call) archives a finished job's checkpoint
into it. Before, a failed object upload became a permanent "failed verification" and the run Failed.
Now every step either archives or leaves the run waiting with StorageUnavailable; none fails it, and
the run ends Succeeded once the storage answers again, with the archive verified. Jobs live in the
scripted launcher of tests/operator/test_reconcile.py (the scheduler is the edge that cannot run here).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs
import yaml

from olmo_operator import archive, layout
from olmo_operator.plan import condition
from olmo_operator.reconcile import Reconciler
from tests.faults.s3_fault_proxy import FaultProxy
from tests.operator.test_reconcile import EXAMPLE, T0, ScriptedLauncher, train
from tests.s3server import S3Server


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as running:
        yield running


def test_a_burst_of_503_slowdown_during_the_archive_ends_succeeded(
    s3_server: S3Server, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "RETRY_DELAYS", (0.1, 0.2))  # its shape is the next test's; not its seconds
    bucket = s3_server.make_bucket("throttled-" + secrets.token_hex(3))
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-throttled", generation=1)
    document["spec"]["storage"] = {"uri": f"{bucket}/runs", "scratchUri": (tmp_path / "scratch").as_uri()}
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    launcher = ScriptedLauncher()
    # botocore tries each request 5 times with up to 15 s of backoff, and s3fs each call 5 times: one
    # try each keeps the test short and leaves the whole burst to the backoff under test.
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    options = {
        **s3_server.storage_options(),
        "endpoint_url": proxy.url,
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    reconciler = Reconciler(lambda _ns: launcher, options_for=lambda _run: options)

    def step(status: dict[str, Any], minutes: int) -> Any:
        reconciler.clock = lambda: T0 + dt.timedelta(minutes=minutes)
        return reconciler.step({**document, "status": status})

    started = step({}, 0)
    [name] = launcher.requests
    run = started.run
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    train(save, 8)
    launcher.set(name, "Succeeded", 0)

    proxy.burst(50)
    status = started.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    reasons = []
    for minute in range(1, 60):
        outcome = step(status, minute)
        status = outcome.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        pretrain = outcome.status.phases["pretrain"]
        assert pretrain.state != "Failed" and pretrain.jobs[0].state != "Failed", pretrain.message
        unavailable = condition(outcome.status, "StorageUnavailable")
        reasons.append(unavailable.reason if unavailable else None)
        if outcome.status.stage == "Succeeded":
            break
    assert proxy.answered_503 == 50  # the whole burst was met, and outlived
    assert outcome.status.stage == "Succeeded", (reasons, outcome.status.phases["pretrain"].message)
    uri = outcome.status.phases["pretrain"].archive
    assert uri is not None and uri.startswith(f"{bucket}/runs/lab/olmo2-tiny/archive/pretrain/step8")
    assert archive.verify_checkpoint(uri, options=s3_server.storage_options()).ok


def test_busy_storage_is_transient_and_refused_credentials_are_not() -> None:
    import errno

    assert archive.transient(OSError(errno.EBUSY, "Service Unavailable"))
    assert archive.transient(ConnectionResetError())
    assert not archive.transient(FileNotFoundError("gone"))
    assert not archive.transient(archive.StorageAccessError("denied", denied=True))
    assert not archive.transient(archive.CorruptSourceError("bad"))
    waits: list[float] = []
    calls = iter([OSError(errno.EBUSY, "busy"), OSError(errno.EBUSY, "busy"), "done"])

    def call() -> str:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert archive.retrying(call, delays=(1.0, 2.0, 4.0), sleep=waits.append) == "done"
    assert waits == [1.0, 2.0]
    with pytest.raises(OSError):
        archive.retrying(
            lambda: (_ for _ in ()).throw(OSError(errno.EBUSY, "busy")), delays=(1.0,), sleep=waits.append
        )
