"""Storage that cannot be reached, or refuses the credentials: the run waits with StorageUnavailable.

The Reconciler (the step the kopf handlers and `olmorun local` both call) runs against a real SeaweedFS
server. "Unreachable" is the same bucket through an endpoint on a closed port, then the real one again:
what a client sees while the server is down and after it is back. Jobs live in the scripted launcher of
tests/operator/test_reconcile.py (the scheduler is the edge that cannot run here); their checkpoints
are written to a local scratch directory with the real MANIFEST code, and archived with archive.py.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import archive, layout
from olmo_operator.api import JobStatus, PhaseStatus, parse_olmorun
from olmo_operator.plan import condition
from olmo_operator.progress import progress_lines
from olmo_operator.reconcile import Outcome, Reconciler
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem
from tests.operator.test_reconcile import EXAMPLE, T0, ScriptedLauncher, train
from tests.s3server import S3Server, free_ports


class Storage:
    """The storage options the Reconciler uses for the run, switchable between down and up."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.up = True

    def options(self, _run: Any) -> dict[str, Any]:
        if self.up:
            return self.server.storage_options()
        # Nothing listens on this port; one attempt per call keeps the test quick (botocore retries 5x).
        down = f"http://127.0.0.1:{free_ports(1)[0]}"
        return {
            **self.server.storage_options(),
            "endpoint_url": down,
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }


def _document(bucket: str, scratch: Path) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-storage", generation=1)
    document["spec"]["storage"] = {"uri": f"{bucket}/runs", "scratchUri": scratch.as_uri()}
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    return document


def _step(reconciler: Reconciler, document: dict[str, Any], status: dict[str, Any], minutes: int) -> Outcome:
    reconciler.clock = lambda: T0 + dt.timedelta(minutes=minutes)
    return reconciler.step({**document, "status": status})


def _dump(outcome: Outcome) -> dict[str, Any]:
    return outcome.status.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_an_unreachable_endpoint_makes_the_run_wait_and_it_proceeds_when_back(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "RETRY_DELAYS", (0.1,))  # each step tries twice (a blip), then waits
    bucket = s3_server.make_bucket("unreachable-" + secrets.token_hex(3))
    storage = Storage(s3_server)
    launcher = ScriptedLauncher()
    reconciler = Reconciler(lambda _ns: launcher, options_for=storage.options)
    document = _document(bucket, tmp_path / "scratch")

    # Down from the start: run.json cannot be written, so nothing is submitted; the run waits.
    storage.up = False
    first = _step(reconciler, document, {}, 0)
    down = condition(first.status, "StorageUnavailable")
    assert down is not None and (down.status, down.reason) == ("True", "Unreachable")
    assert "endpoint http://127.0.0.1:" in down.message and "runs" in down.message
    assert s3_server.secret_key not in down.message and s3_server.access_key not in down.message
    assert launcher.requests == {} and first.requeue_after == 30.0 and not first.finished
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "StorageUnavailable")]
    again = _step(reconciler, document, _dump(first), 1)
    assert again.events == []  # not repeated while it stays down
    still = condition(again.status, "StorageUnavailable")
    assert still is not None and still.last_transition_time == down.last_transition_time

    # Back: the run starts, and says the storage answers again.
    storage.up = True
    started = _step(reconciler, document, _dump(again), 2)
    [name] = launcher.requests
    back = condition(started.status, "StorageUnavailable")
    assert back is not None and (back.status, back.reason) == ("False", "Available")
    assert "StorageAvailable" in [e.reason for e in started.events]

    # The job trains into local scratch and finishes while the storage is down again: its final
    # checkpoint cannot be archived, and the job is neither failed nor forgotten.
    run = started.run
    assert run is not None
    save = layout.save_dir(run, run.phase("pretrain"), 6198)
    train(save, 4)
    final = train(save, 8)
    launcher.set(name, "Succeeded", 0)
    storage.up = False
    waiting = _step(reconciler, document, _dump(started), 3)
    pretrain = waiting.status.phases["pretrain"]
    assert pretrain.state != "Failed" and pretrain.jobs[0].state != "Failed"
    assert condition(waiting.status, "StorageUnavailable").status == "True"
    fs, path = filesystem(final)
    assert manifest.verify(fs, path).ok  # the local checkpoint is untouched

    # Back again: archived, verified, the phase and the run succeed.
    storage.up = True
    done = _step(reconciler, document, _dump(waiting), 4)
    pretrain = done.status.phases["pretrain"]
    assert pretrain.state == "Succeeded" and pretrain.archive is not None
    assert pretrain.archive.startswith(f"{bucket}/runs/lab/olmo2-tiny/archive/pretrain/step8")
    assert done.status.stage == "Succeeded"
    assert condition(done.status, "StorageUnavailable").status == "False"


def test_refused_credentials_make_the_run_wait_with_access_denied(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket("denied-" + secrets.token_hex(3))
    wrong = "not-the-secret-" + secrets.token_hex(8)
    launcher = ScriptedLauncher()
    reconciler = Reconciler(
        lambda _ns: launcher, options_for=lambda _run: {**s3_server.storage_options(), "secret": wrong}
    )
    outcome = _step(reconciler, _document(bucket, tmp_path / "scratch"), {}, 0)
    refused = condition(outcome.status, "StorageUnavailable")
    assert refused is not None and (refused.status, refused.reason) == ("True", "AccessDenied")
    assert "AWS_ACCESS_KEY_ID" in refused.message  # the fix is named
    assert wrong not in refused.message and s3_server.secret_key not in refused.message
    assert launcher.requests == {}


def test_the_local_runners_progress_lines_skip_storage_that_cannot_be_reached(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`olmorun local --storage spec` prints a progress line per running job after each step, reading its
    metrics: storage that went away in between is skipped there (the step's condition says why)."""
    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    for key, value in {**s3_server.env(), "AWS_ENDPOINT_URL": down, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    document = _document("s3://nowhere", tmp_path / "scratch")
    document["spec"]["storage"] = {"uri": "s3://nowhere/runs"}
    run = parse_olmorun(document)
    phase = run.status.phases.setdefault("pretrain", PhaseStatus())
    phase.jobs = [JobStatus(name="olmo2-tiny-pretrain-a1", seed=6198, state="Running", attempts=1)]
    assert progress_lines(run, {}) == []


def test_the_local_runners_progress_lines_read_storage_through_the_specs_endpoint(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress reads a job's metrics where the jobs write them: through `spec.storage.endpointUrl` (the
    operator and the pods use it), with credentials from the environment. An environment that names no
    endpoint, or another one, must not hide the progress of a run whose spec names its own."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")  # nothing listens here
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket = s3_server.make_bucket("progress-" + secrets.token_hex(3))
    document = _document(bucket, tmp_path / "scratch")
    document["spec"]["storage"] = {"uri": f"{bucket}/runs", "endpointUrl": s3_server.endpoint_url}
    run = parse_olmorun(document)
    phase = run.status.phases.setdefault("pretrain", PhaseStatus())
    phase.jobs = [JobStatus(name="olmo2-tiny-pretrain-a1", seed=6198, state="Running", attempts=1)]
    save = layout.save_dir(run, run.spec.phases[0], 6198)
    fs = s3_server.filesystem()
    fs.pipe(save.removeprefix("s3://") + "/metrics.jsonl", b'{"step": 7, "loss": 2.5, "tokens": 3584}\n')
    lines = progress_lines(run, {})
    assert len(lines) == 1 and "step 7/" in lines[0] and "loss 2.5000" in lines[0]
