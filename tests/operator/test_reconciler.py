"""The Reconciler: the one step both the kopf handlers and `olmorun local` call (parse -> storage
options -> observe/plan/apply -> events). Real storage (local files and a real S3 server); the
launcher is scripted (tests/operator/test_reconcile.py), as a scheduler's answers are the test's input.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import layout
from olmo_operator.reconcile import Reconciler
from tests.operator.test_reconcile import EXAMPLE, T0, ScriptedLauncher, train
from tests.s3server import S3Server


def document(storage: dict[str, Any]) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="lab", uid="uid-9", generation=1)
    doc["spec"]["storage"] = storage
    doc["spec"]["phases"] = doc["spec"]["phases"][:1]
    return doc


def test_an_invalid_spec_is_refused_once_and_creates_nothing(tmp_path: Path) -> None:
    launcher = ScriptedLauncher()
    reconciler = Reconciler(lambda _namespace: launcher, clock=lambda: T0)
    bad = document({"uri": tmp_path.as_uri()})
    bad["spec"]["phases"][0]["maxTokens"] = "10Q"
    first = reconciler.step(bad)
    assert first.run is None and first.finished and not first.submitted
    [event] = first.events
    assert (event.type, event.reason) == (
        "Warning",
        "InvalidSpec",
    ) and "spec.phases[0].maxTokens" in event.message
    invalid = next(c for c in first.status.conditions if c.type == "Invalid")
    assert (invalid.status, invalid.reason) == ("True", "InvalidSpec")
    again = reconciler.step({**bad, "status": first.status.model_dump(mode="json", by_alias=True)})
    assert again.events == [] and again.status.stage == "Invalid"  # the same problem is not announced twice
    assert launcher.requests == {} and not list(tmp_path.iterdir())  # no job, no file


def test_the_step_reaches_storage_through_the_specs_endpoint(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only credentials come from the environment; the endpoint is the spec's, for the step's own
    storage I/O (run.json, configs, observing checkpoints, archiving) and for the jobs alike."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    bucket = s3_server.make_bucket("reconciler").removeprefix("s3://")
    doc = document(
        {"uri": f"s3://{bucket}/runs", "scratchUri": tmp_path.as_uri(), "endpointUrl": s3_server.endpoint_url}
    )
    launcher = ScriptedLauncher()
    now = [T0]
    reconciler = Reconciler(lambda _namespace: launcher, clock=lambda: now[0])
    first = reconciler.step(doc)
    [submit] = first.submitted
    assert submit.request.env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    fs = s3_server.filesystem()
    assert fs.exists(f"{bucket}/runs/lab/olmo2-tiny/run.json")
    assert first.run is not None
    train(layout.save_dir(first.run, first.run.phase("pretrain"), 6198), 6)
    launcher.set(submit.job_name, "Succeeded", 0)
    now[0] = T0 + dt.timedelta(minutes=1)
    done = reconciler.step({**doc, "status": first.status.model_dump(mode="json", by_alias=True)})
    assert done.status.stage == "Succeeded" and done.finished
    assert fs.exists(f"{bucket}/runs/lab/olmo2-tiny/archive/pretrain/step6/MANIFEST.json")
    assert [e.reason for e in done.events].count("Archived") == 1


def test_a_deprecated_field_is_announced_once_per_generation(tmp_path: Path) -> None:
    launcher = ScriptedLauncher()
    reconciler = Reconciler(lambda _namespace: launcher, clock=lambda: T0)
    old = document({"uri": tmp_path.as_uri()})
    old["spec"]["phases"][0]["archive"] = False
    first = reconciler.step(old)
    assert [e.reason for e in first.events if e.type == "Warning"] == ["DeprecatedField"]
    assert first.run is not None and first.run.spec.phases[0].archive_final is False
    again = reconciler.step({**old, "status": first.status.model_dump(mode="json", by_alias=True)})
    assert "DeprecatedField" not in [e.reason for e in again.events]
