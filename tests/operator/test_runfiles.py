"""runfiles.py reads a run where it is given (issue 26 #1) and with the storage options of its spec
(issue 20 #2): a copied, renamed and downloaded run is read under its own folder, never at the storage
its run.json names; a folder that is not a run says so and names the runs below it; an s3:// run whose
endpoint is only in the spec (no AWS_ENDPOINT_URL) is read by `diff`, `report` and `status` on a real
S3 server (SeaweedFS).

The run's files are written here by hand, at the places layout.py names (run.json, config.json,
env.json, metrics.jsonl, committed MANIFESTs), as the operator and the trainer write them: no training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import api, layout
from olmo_operator.cli import main
from olmo_operator.cli_diff import load_spec
from olmo_operator.local_state import localize
from olmo_operator.plan import run_spec_hash
from olmo_operator.rundiff import compare
from olmo_operator.runfiles import RunNotFoundError, read_run
from olmo_trainer import manifest, storage
from tests.s3server import S3Server

ROOT = Path(__file__).resolve().parents[2]


def tiny_document(uri: str, endpoint: str | None = None) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())
    document["spec"]["phases"] = document["spec"]["phases"][:2]  # pretrain -> anneal x2 seeds
    document["spec"]["storage"] = {"uri": uri, **({"endpointUrl": endpoint} if endpoint else {})}
    return document


def write_run(run: api.OlmoRun, put: Any) -> None:
    """Every file of a finished run at its layout place; `put(uri, bytes)` writes one file."""
    record = {
        "apiVersion": run.api_version,
        "kind": run.kind,
        "specHash": run_spec_hash(run),
        "metadata": {"name": run.name, "namespace": run.namespace},
        "spec": run.spec.model_dump(mode="json", by_alias=True),
    }
    put(layout.run_record_uri(run), json.dumps(record).encode())
    for phase in run.spec.phases:
        for seed in layout.job_seeds(run, phase):
            save = layout.save_dir(run, phase, seed)
            put(layout.config_uri(run, phase, seed), json.dumps({"saveDir": save, "seed": seed}).encode())
            put(f"{save}/env.json", json.dumps({"writtenAt": "2026-01-01T00:00:00+00:00"}).encode())
            rows = [{"step": s, "loss": 4.0 / s + seed * 1e-6, "tokens": 1024 * s} for s in (1, 2, 3)]
            put(f"{save}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
            step_dir = layout.step_uri(layout.archive_dir(run, phase, seed), 3)
            put(f"{step_dir}/model.bin", b"weights")
            manifest_record = {
                "format": manifest.FORMAT,
                "step": 3,
                "files": {},
                "createdAt": "2026-01-01T00:01:00+00:00",
                "content": {"sha256": f"{seed:064x}"},
            }
            put(manifest.manifest_path(step_dir), manifest.encode(manifest_record))


def put_local(uri: str, blob: bytes) -> None:
    path = Path(storage.uri_to_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)


@pytest.fixture
def local_run(tmp_path: Path) -> tuple[api.OlmoRun, Path]:
    """A finished run under <tmp>/storage/default/olmo2-tiny (as `olmorun local` lays it out)."""
    run = localize(api.parse_olmorun(tiny_document("file:///nowhere")), tmp_path / "wd")
    write_run(run, put_local)
    return run, Path(storage.uri_to_path(layout.run_root(run)))


def change_one_loss(root: Path) -> None:
    metrics = root / "phases" / "anneal" / "s42069" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[1]["loss"] += 0.5
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("copy_to", ["downloaded copy", "other/default/olmo2-tiny-renamed", "ns/olmo2-tiny"])
def test_a_copy_with_one_changed_loss_is_read_where_it_is_and_reported_different(
    local_run: tuple[api.OlmoRun, Path], tmp_path: Path, copy_to: str
) -> None:
    """Before, a folder not named <namespace>/<run> was read at the storage its run.json names: the
    original, so the copy was `identical`."""
    _, root = local_run
    copy = tmp_path / copy_to
    shutil.copytree(root, copy)
    change_one_loss(copy)
    original, copied = read_run(str(root)), read_run(str(copy))
    assert copied.uri == str(copy)
    result = compare(original, copied)
    assert not result.identical
    assert result.first is not None and result.first.describe() == (
        f"phase anneal seed 42069 step 2: metric loss: A={2.0 + 42069e-6!r} B={2.5 + 42069e-6!r}"
    )
    assert compare(original, read_run(f"{copy.as_uri()}/")).first == result.first  # a file:// URI too


def test_every_file_of_a_copy_is_read_under_it(local_run: tuple[api.OlmoRun, Path], tmp_path: Path) -> None:
    """A copy missing a file reads it as missing: nothing is taken from the original."""
    _, root = local_run
    copy = tmp_path / "partial"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "archive" / "anneal-s42")
    (copy / "phases" / "pretrain" / "env.json").unlink()
    record = read_run(str(copy))
    anneal = record.job("anneal", 42)
    pretrain = record.job("pretrain", 6198)
    assert anneal is not None and anneal.checkpoints == {} and len(anneal.metrics) == 3
    assert pretrain is not None and pretrain.env is None and 3 in pretrain.checkpoints


def test_a_folder_that_is_not_a_run_says_so_and_names_the_runs_below(
    local_run: tuple[api.OlmoRun, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, root = local_run
    with pytest.raises(RunNotFoundError, match=rf"not a run \(no run.json here\); runs below it: {root}"):
        read_run(str(tmp_path / "wd"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["diff", str(empty), str(root)]) == 2
    assert f"{empty}: not a run (no run.json here); give a run root" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# An s3:// run whose endpoint is only in the spec
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def s3_run(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(spec file, `olmorun local --storage spec` workdir) of a finished run in a SeaweedFS bucket; the
    environment has the credentials but no endpoint: only the spec names it."""
    bucket = s3_server.make_bucket("spec-endpoint")
    env = s3_server.env()
    document = tiny_document(f"{bucket}/olmo", endpoint=env["AWS_ENDPOINT_URL"])
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env["AWS_SECRET_ACCESS_KEY"])
    fs = s3_server.filesystem()
    write_run(api.parse_olmorun(document), lambda uri, blob: fs.pipe_file(uri.removeprefix("s3://"), blob))
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(document))
    workdir = tmp_path / "wd-s3"
    workdir.mkdir()
    archive = layout.archive_uri(
        api.parse_olmorun(document), api.parse_olmorun(document).phase("pretrain"), 6198, 3
    )
    status = {
        "phases": {
            "pretrain": {
                "state": "Succeeded",
                "jobs": [
                    {"name": "olmo2-tiny-pretrain-a1", "seed": 6198, "state": "Succeeded", "archive": archive}
                ],
            }
        }
    }
    state = {"document": document, "generation": 1, "specHash": "", "createdAt": "", "status": status}
    (workdir / "state.json").write_text(json.dumps(state))
    return spec, workdir


def test_diff_report_and_status_use_the_endpoint_of_the_spec(
    s3_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, workdir = s3_run
    from_spec, from_workdir = read_run(str(spec), load_spec=load_spec), read_run(str(workdir))
    assert from_spec.uri == "s3://spec-endpoint/olmo/default/olmo2-tiny"
    assert [len(j.metrics) for j in from_spec.jobs] == [3, 3, 3]
    assert compare(from_spec, from_workdir).identical
    assert main(["diff", str(spec), str(workdir)]) == 0
    assert "identical (bit-exact)" in capsys.readouterr().out
    report = tmp_path / "report.html"
    assert main(["report", str(workdir), "-o", str(report)]) == 0
    assert f"{6198:064x}"[:16] in report.read_text()
    assert main(["status", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["pretrain", "step3", f"{6198:064x}"] for line in out.splitlines()), out


def test_an_s3_root_given_by_hand_takes_the_endpoint_flag(
    s3_run: tuple[Path, Path], s3_server: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _ = s3_run
    endpoint = s3_server.env()["AWS_ENDPOINT_URL"]
    root = "s3://spec-endpoint/olmo/default/olmo2-tiny"
    assert main(["diff", root, str(spec), "--endpoint-url", endpoint]) == 0, capsys.readouterr().err
