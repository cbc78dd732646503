"""`olmorun archive` / `olmorun verify` against a real SeaweedFS server, credentials from the environment."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from olmo_operator import archive, cli
from olmo_trainer import manifest as mf
from olmo_trainer.storage import filesystem
from tests.operator.test_archive import make_checkpoint
from tests.s3server import S3Server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Credentials and endpoint in the environment, as a Kubernetes Secret would put them."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket("cli-" + secrets.token_hex(4))


# The installed console script, as users run it (`python -m olmo_operator.cli` would load cli twice).
OLMORUN = str(Path(sys.executable).parent / "olmorun")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_archive_then_verify(
    s3_env: S3Server, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_checkpoint(tmp_path)
    dst = f"{bucket}/run/checkpoints/step100"
    code, out, err = run_cli(capsys, "archive", str(src), dst, "--workers", "2")
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and "step 100" in out and "5 copied" in out and "0 skipped" in out
    code, out, _ = run_cli(capsys, "verify", dst)
    assert code == 0 and "OK (5 files verified)" in out
    code, out, _ = run_cli(capsys, "archive", str(src), dst, "--verify-remote")
    assert code == 0 and "0 copied" in out and "5 skipped" in out and "remote re-hashed" in out
    # The secret of the environment never shows up in what the commands print.
    assert s3_env.secret_key not in out


def test_verify_checkpoints_dir_picks_latest_committed(
    s3_env: S3Server, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints = f"{bucket}/run/checkpoints"
    for step in (100, 200):
        archive.archive_checkpoint(str(make_checkpoint(tmp_path, step=step)), f"{checkpoints}/step{step}")
    s3_env.filesystem().pipe_file(f"{checkpoints}/step300/__0_0.distcp", b"half written, no MANIFEST")
    code, out, _ = run_cli(capsys, "verify", checkpoints + "/", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["checkpoint"] == f"{checkpoints}/step200"
    assert (report["ok"], report["checked"], report["note"]) == (
        True,
        5,
        "latest committed checkpoint: step 200",
    )


def test_verify_reports_corrupted_and_missing_files(
    s3_env: S3Server, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = f"{bucket}/step100"
    archive.archive_checkpoint(str(make_checkpoint(tmp_path)), dst)
    fs = s3_env.filesystem()
    fs.pipe_file(f"{dst}/__0_0.distcp", secrets.token_bytes(300_000))
    fs.rm_file(f"{dst}/empty.bin")
    code, out, _ = run_cli(capsys, "verify", dst)
    assert code == 1
    assert "FAILED (1 missing, 1 corrupted of 5 files)" in out
    assert "  corrupted  __0_0.distcp" in out and "  missing    empty.bin" in out
    code, out, _ = run_cli(capsys, "verify", dst, "--json")
    assert code == 1
    assert json.loads(out)["corrupted"] == ["__0_0.distcp"]


def test_killed_archive_leaves_no_manifest_and_rerun_resumes(
    s3_env: S3Server, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files: dict[str, int | None] = {f"__{i}_0.distcp": 2 * 2**20 for i in range(16)}
    files[".metadata"] = None  # the DCP index naming the 16 shards
    src = make_checkpoint(tmp_path, files=files)
    dst = f"{bucket}/step100"
    client = s3_env.client()

    def uploaded() -> list[str]:
        listing = client.list_objects_v2(Bucket=bucket[5:], Prefix="step100/")
        return [item["Key"].split("/", 1)[1] for item in listing.get("Contents", [])]

    # One file at a time so the kill lands midway; SIGKILL: no cleanup code of ours runs.
    command = [OLMORUN, "archive", str(src), dst, "--workers", "1"]
    process = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(uploaded()) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, "archive finished before it could be interrupted"
    done = uploaded()
    assert 3 <= len(done) < len(files) and mf.MANIFEST_NAME not in done

    code, out, _ = run_cli(capsys, "verify", dst)
    assert code == 1 and "NOT COMMITTED" in out
    report = archive.archive_checkpoint(str(src), dst)
    # The server may still finish the one PUT in flight at the kill (its body was sent), so that file
    # can be skipped too; every object present is whole (S3 writes are atomic) and is reused.
    assert len(done) <= report.skipped <= len(done) + 1
    assert report.copied == len(files) - report.skipped
    code, out, _ = run_cli(capsys, "verify", dst)
    assert code == 0 and f"OK ({len(files)} files verified)" in out


def test_wrong_credentials_exit_2_without_the_secret(
    s3_env: S3Server,
    bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_checkpoint(tmp_path)
    wrong = "not-the-secret-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    for argv in (("archive", str(src), f"{bucket}/step100"), ("verify", f"{bucket}/step100")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2
        assert "access denied" in err and "AWS_SECRET_ACCESS_KEY" in err
        assert wrong not in out + err and s3_env.secret_key not in out + err
    # Also true in a separate process, where logging and tracebacks would show.
    command = [OLMORUN, "verify", f"{bucket}/step100"]
    result = subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr


def test_user_errors_and_uncommitted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "verify", str(tmp_path / "nothing-here"))
    assert code == 2 and "is not a checkpoint" in err
    code, _, err = run_cli(capsys, "verify", str(tmp_path))
    assert code == 2 and "is not a checkpoint" in err
    src = make_checkpoint(tmp_path / "ck")
    (src / mf.MANIFEST_NAME).unlink()
    code, out, _ = run_cli(capsys, "verify", str(src))
    assert code == 1 and "NOT COMMITTED" in out
    code, out, _ = run_cli(capsys, "verify", str(src.parent))
    assert code == 1 and "no committed checkpoint among 1 step directories" in out
    code, _, err = run_cli(capsys, "archive", str(src), str(tmp_path / "out"))
    assert code == 2 and "not a committed checkpoint" in err
    code, _, err = run_cli(capsys, "verify", "nosuchscheme://x/step1")
    assert code == 2 and "Protocol not known" in err
    with pytest.raises(SystemExit):
        cli.main(["archive", str(src), str(tmp_path / "out"), "--workers", "0"])


def test_corrupt_source_exits_1_and_commits_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_checkpoint(tmp_path / "scratch")
    size = (src / ".metadata").stat().st_size
    (src / ".metadata").write_bytes(b"x" * size)  # same size, other bytes: only the hash can tell
    dst = tmp_path / "archive" / "step100"
    code, _, err = run_cli(capsys, "archive", str(src), f"file://{dst}")
    assert code == 1 and ".metadata sha256 differs from MANIFEST" in err
    assert not (dst / mf.MANIFEST_NAME).exists() and not (dst / ".metadata").exists()


def test_verify_names_unlisted_files_and_what_the_manifest_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_checkpoint(tmp_path)
    record = mf.read_manifest(*filesystem(str(src)))
    assert record is not None
    del record["files"]["__1_0.distcp"]  # a MANIFEST that left a shard out...
    mf.commit(*filesystem(str(src)), record)
    (src / "late.log").write_text("written after the commit")  # ...and a file nobody listed
    code, out, _ = run_cli(capsys, "verify", str(src))
    assert code == 1
    assert (
        "FAILED (0 missing, 0 corrupted, 2 not in MANIFEST.json of 4 files; MANIFEST.json lacks __1_0.distcp)"
        in out
    )
    assert "  unlisted   __1_0.distcp" in out and "  unlisted   late.log" in out
    assert "  lacking    __1_0.distcp" in out
    code, out, _ = run_cli(capsys, "verify", str(src), "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["unlisted"], report["incomplete"]) == (
        1,
        False,
        ["__1_0.distcp", "late.log"],
        ["__1_0.distcp"],
    )


def test_verify_export_and_eval_mean_one_checkpoint_for_a_directory_without_a_committed_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20: export-hf/eval and verify each resolved a checkpoint URI, and on a directory of steps none
    of which is committed they differed (export-hf took the directory itself, verify its newest step).
    Now all three go through manifest.resolve_checkpoint: the newest step, reported NOT COMMITTED."""
    make_checkpoint(tmp_path / "checkpoints", step=100)
    newest = make_checkpoint(tmp_path / "checkpoints", step=200)
    for step in (100, 200):
        (tmp_path / "checkpoints" / f"step{step}" / mf.MANIFEST_NAME).unlink()
    code, out, _ = run_cli(capsys, "verify", str(tmp_path / "checkpoints"))
    assert code == 1 and f"{newest}: NOT COMMITTED" in out
    assert "no committed checkpoint among 2 step directories" in out
    code, _, err = run_cli(capsys, "export-hf", str(tmp_path / "checkpoints"), str(tmp_path / "hf"))
    assert code == 2 and f"{newest}: NOT COMMITTED" in err
    rows = tmp_path / "heldout.jsonl"
    rows.write_text(
        json.dumps({"messages": [{"role": "user", "content": "1+1?"}], "ground_truth": "2"}) + "\n"
    )
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "checkpoints"), "--data", str(rows))
    assert code == 2 and f"{newest} records no model config" in err  # it took the same step
    code, _, err = run_cli(capsys, "export-hf", str(tmp_path / "nothing-here"), str(tmp_path / "hf"))
    assert code == 2 and "is not a checkpoint" in err
