"""An archive interrupted at every stage of its copy resumes, on a real S3 server (SeaweedFS).

archive_checkpoint's stages: the data objects (one PUT each here, largest first, one at a time; a
failed one does not stop the others, so "the endpoint went away" fails every PUT from then on), then
a listing that checks their sizes, then the MANIFEST (the commit), then the caller records the archive
in the run's status. The fault is the network failing at the chosen call (the s3fs client's door to the
server, as in test_storage_multipart.py); a SIGKILL in the middle of the objects is
tests/operator/test_cli_storage.py::test_killed_archive_leaves_no_manifest_and_rerun_resumes, and a
failed multipart part tests/faults/test_storage_multipart.py.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import archive, layout
from olmo_operator.api import parse_olmorun
from olmo_operator.reconcile import reconcile_plan
from olmo_trainer import manifest as mf
from tests.faults.test_storage_multipart import fail_s3_call, nth
from tests.operator.test_archive import FILES, make_checkpoint
from tests.operator.test_reconcile import EXAMPLE, T0, ScriptedLauncher, train
from tests.s3server import S3Server


def _manifest_put(method: str, kwargs: dict[str, Any]) -> bool:
    return method == "put_object" and str(kwargs.get("Key", "")).endswith(mf.MANIFEST_NAME)


def _size_listing() -> Callable[[str, dict[str, Any]], bool]:
    """The first listing once every object is up (earlier ones find what is already there)."""
    puts = 0

    def match(method: str, _kwargs: dict[str, Any]) -> bool:
        nonlocal puts
        puts += method == "put_object"
        return method == "list_objects_v2" and puts == len(FILES)

    return match


STAGES: dict[str, tuple[Callable[[], Callable[[str, dict[str, Any]], bool]], int]] = {
    # stage: (which call fails, objects already uploaded when it does)
    "before any object": (lambda: nth("put_object", 1, onwards=True), 0),
    "mid-objects": (lambda: nth("put_object", 3, onwards=True), 2),
    "after the objects, at the size check": (_size_listing, len(FILES)),
    "after the objects, at the MANIFEST": (lambda: _manifest_put, len(FILES)),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_archive_interrupted_at_each_stage_resumes(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    src = make_checkpoint(tmp_path)
    bucket = s3_server.make_bucket("stage-" + secrets.token_hex(4))
    dst = f"{bucket}/run/archive/pretrain/step100"
    options = s3_server.storage_options()
    when, done = STAGES[stage]
    fail_s3_call(monkeypatch, when())
    with pytest.raises(archive.StorageAccessError, match="EndpointConnectionError"):
        archive.archive_checkpoint(str(src), dst, dst_options=options, workers=1)
    monkeypatch.undo()

    # Not a checkpoint yet: no MANIFEST, whatever was uploaded.
    assert not archive.verify_checkpoint(dst, options=options).committed
    assert archive.latest_checkpoint(f"{bucket}/run/archive/pretrain", options=options) is None

    report = archive.archive_checkpoint(str(src), dst, dst_options=options, workers=1)
    assert (report.skipped, report.copied) == (done, len(FILES) - done)  # nothing uploaded twice
    verified = archive.verify_checkpoint(dst, options=options)
    assert verified.ok and verified.checked == len(FILES)


def test_an_archive_committed_but_not_recorded_is_verified_not_copied_again(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last stage: the MANIFEST is up, and the status that records the archive is lost (the operator
    died before its patch). The next step, from the old status, finds the archive and uploads nothing."""
    bucket = s3_server.make_bucket("recorded-" + secrets.token_hex(4))
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-arch", generation=1)
    document["spec"]["storage"] = {"uri": f"{bucket}/runs", "scratchUri": (tmp_path / "scratch").as_uri()}
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    run = parse_olmorun(document)
    options = s3_server.storage_options()
    launcher = ScriptedLauncher()
    run = run.model_copy(
        update={"status": reconcile_plan(run, launcher=launcher, now=T0, storage_options=options).status}
    )
    [name] = launcher.requests
    train(layout.save_dir(run, run.phase("pretrain"), 6198), 8)
    launcher.set(name, "Succeeded", 0)
    before = run.status  # the job Running: the status the lost patch would have replaced

    archived = reconcile_plan(
        run, launcher=launcher, now=T0 + dt.timedelta(minutes=1), storage_options=options
    )
    uri = archived.status.phases["pretrain"].archive
    assert uri is not None and archive.verify_checkpoint(uri, options=options).ok

    calls = fail_s3_call(monkeypatch, lambda _method, _kwargs: False)  # count only
    again = reconcile_plan(
        run.model_copy(update={"status": before}),
        launcher=launcher,
        now=T0 + dt.timedelta(minutes=2),
        storage_options=options,
    )
    assert again.status.phases["pretrain"].archive == uri and again.status.stage == "Succeeded"
    assert "put_object" not in calls and "upload_part" not in calls  # verified where it is, not copied
