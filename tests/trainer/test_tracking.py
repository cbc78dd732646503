"""W&B as OLMo-core's WandBCallback uses it: no run without a project; group, job type and tags; the exit
code on finish; an offline run kept with the job's records, also on object storage (SeaweedFS).

The real wandb library runs in-process, offline (no network here); what it wrote is read back from its
own run file (`run-<id>.wandb`, tests/trainer/wandb_records.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from olmo_operator import api
from olmo_operator.resolve import resolve_config
from olmo_trainer import layout
from olmo_trainer.config import TrainConfig
from olmo_trainer.tracking import Tracker
from tests.s3server import S3Server
from tests.trainer.dist_util import tiny_config
from tests.trainer.wandb_records import run_records

TRACKING = {"project": "olmo2", "group": "olmo2-tiny", "jobType": "anneal", "tags": ["lab", "anneal"]}


def _config(tmp_path: Path, **overrides: object) -> TrainConfig:
    path = tiny_config(tmp_path, **overrides)
    return TrainConfig.model_validate(json.loads(path.read_text()))


def _log_two_steps(tracker: Tracker) -> None:
    for step in (1, 2):
        assert tracker.log({"step": step, "loss": 3.0 - step, "lr": None})


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_a_job_without_a_tracking_project_starts_no_wandb_run(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.tracking.project is None
    tracker = Tracker(cfg, rank=0, resume_step=None)
    assert tracker.wandb_run is None
    _log_two_steps(tracker)
    tracker.close()
    assert (tmp_path / "out" / layout.METRICS_NAME).exists()
    assert not (tmp_path / "out" / layout.WANDB_NAME).exists()


def test_the_wandb_run_is_grouped_typed_tagged_and_finishes_with_the_exit_code(tmp_path: Path) -> None:
    cfg = _config(tmp_path, tracking=TRACKING)
    tracker = Tracker(cfg, rank=0, resume_step=None)
    _log_two_steps(tracker)
    tracker.close(exit_code=1)
    (run_dir,) = (tmp_path / "out" / layout.WANDB_NAME).glob("offline-run-*")
    records = run_records(run_dir)
    run = records["run"][0].run
    assert (run.project, run.run_group, run.job_type) == ("olmo2", "olmo2-tiny", "anneal")
    assert list(run.tags) == ["lab", "anneal"]
    assert [r.exit.exit_code for r in records["exit"]] == [1]
    assert len(records["history"]) == 2


def test_an_offline_run_on_object_storage_is_uploaded_beside_the_records(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.make_bucket("wandb-runs")
    fs = s3_server.filesystem()
    kept = f"{bucket}/ns/tiny/phases/pretrain"
    tracker = Tracker(_config(tmp_path, saveDir=kept, tracking=TRACKING), rank=0, resume_step=None)
    temporary = tracker._upload_from
    assert temporary is not None and os.path.isdir(temporary)
    _log_two_steps(tracker)
    tracker.close()
    assert not os.path.exists(temporary)  # nothing left on the node's disk
    (uploaded,) = fs.glob(f"{layout.wandb_uri(kept).removeprefix('s3://')}/offline-run-*/run-*.wandb")
    local = tmp_path / "download"
    fs.get(os.path.dirname(uploaded), str(local), recursive=True)
    assert [r.exit.exit_code for r in run_records(local)["exit"]] == [0]

    # An attempt that lost its lease uploads nothing into the directory its successor owns.
    fenced = f"{bucket}/ns/tiny/phases/fenced"
    tracker = Tracker(
        _config(tmp_path, saveDir=fenced, tracking=TRACKING),
        rank=0,
        resume_step=None,
        may_write=lambda: False,
    )
    tracker.close()
    assert not fs.exists(layout.wandb_uri(fenced).removeprefix("s3://"))


def test_the_spec_names_the_group_the_job_type_and_the_tags() -> None:
    document = {
        "apiVersion": "olmorun.dev/v1alpha1",
        "kind": "OlmoRun",
        "metadata": {"name": "olmo2-tiny", "namespace": "lab", "uid": "u-1"},
        "spec": json.loads(json.dumps(_spec())),
    }
    run = api.OlmoRun.model_validate(document)
    tracking = resolve_config(run, run.phase("pretrain"), 0).tracking
    assert (tracking.project, tracking.group, tracking.job_type) == ("olmo2", "olmo2-tiny", "pretrain")
    assert tracking.tags == ["lab", "pretrain"]
    document["spec"]["tracking"]["wandb"] = {"project": "olmo2", "group": "sweep-3", "tags": ["pretrain"]}
    run = api.OlmoRun.model_validate(document)
    tracking = resolve_config(run, run.phase("pretrain"), 0).tracking
    assert tracking.group == "sweep-3" and tracking.tags == ["pretrain"]
    del document["spec"]["tracking"]
    run = api.OlmoRun.model_validate(document)
    assert resolve_config(run, run.phase("pretrain"), 0).tracking.project is None


def _spec() -> dict[str, object]:
    return {
        "image": "registry.example/olmorun-trainer@sha256:" + "0" * 64,
        "model": {"preset": "tiny"},
        "storage": {"uri": "file:///tmp/olmorun-tracking-test"},
        "tracking": {"wandb": {"project": "olmo2", "tags": ["lab"]}},
        "phases": [
            {
                "name": "pretrain",
                "kind": "pretrain",
                "maxSteps": 4,
                "data": {"sources": [{"name": "s", "synthetic": {"numTokens": "10K"}}]},
                "batch": {"globalBatchSize": 4, "microBatchSize": 1},
            }
        ],
    }
