"""The one storage layout (olmo_trainer.layout) and the MANIFEST I/O on top of it (olmo_trainer.manifest).

No torch: both modules are what the operator image imports. Real local files; the same code runs on
S3 in tests/trainer/test_checkpoint_s3.py and tests/operator/test_archive.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from olmo_trainer import layout, manifest
from olmo_trainer.storage import filesystem
from tests.dcp_files import dcp_metadata

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("uri", "step"),
    [
        ("s3://b/run/phases/p/checkpoints/step120", 120),
        ("s3://b/run/archive/p-s42/step7/", 7),
        ("/scratch/ckpt/step0", 0),
        ("step3", 3),
        ("s3://b/run/checkpoints/latest", None),
        ("s3://b/run/checkpoints/step12.tmp", None),
        ("s3://b/run/checkpoints/step-1", None),
        ("s3://b/run/step5/MANIFEST.json", None),
        ("s3://b/mystep5", None),
    ],
)
def test_step_of_reads_only_a_final_step_component(uri: str, step: int | None) -> None:
    assert layout.step_of(uri) == step


def test_paths_of_a_job_directory() -> None:
    assert layout.checkpoints_dir("s3://x/p/") == "s3://x/p/checkpoints"
    assert layout.step_uri(layout.checkpoints_dir("s3://x/p"), 9) == "s3://x/p/checkpoints/step9"
    assert layout.metrics_uri("/d") == "/d/metrics.jsonl"
    assert layout.manifest_path("/d/checkpoints/step1/") == "/d/checkpoints/step1/MANIFEST.json"
    for step in (0, 1, 10, 123456):  # names and parsing are inverse
        assert layout.parse_step_name(layout.step_name(step)) == step


def test_total_steps_is_max_steps_else_the_ceiling_of_tokens_at_least_one() -> None:
    assert layout.total_steps(max_steps=40, max_tokens=10**9, tokens_per_step=8) == 40
    assert layout.total_steps(max_steps=None, max_tokens=10_000, tokens_per_step=256) == 40  # 39.06 -> 40
    assert layout.total_steps(max_steps=None, max_tokens=1, tokens_per_step=256) == 1
    with pytest.raises(ValueError, match="maxSteps or maxTokens"):
        layout.total_steps(max_steps=None, max_tokens=None, tokens_per_step=256)


def test_exit_codes_are_the_shell_conventions() -> None:
    assert layout.EXIT_PREEMPTED == 128 + 15  # SIGTERM
    codes = {
        layout.EXIT_OK,
        layout.EXIT_FAILED,
        layout.EXIT_USAGE,
        layout.EXIT_PERMANENT,
        layout.EXIT_PREEMPTED,
    }
    assert len(codes) == 5


def _commit_step(root: Path, step: int, files: dict[str, bytes]) -> Path:
    """A committed stand-in checkpoint: the files as opaque DCP shards named by a real `.metadata`."""
    fs, _ = filesystem(str(root))
    directory = Path(layout.step_uri(str(root), step))
    directory.mkdir(parents=True)
    for name, blob in files.items():
        (directory / name).write_bytes(blob)
    (directory / ".metadata").write_bytes(dcp_metadata(files))
    manifest.commit(fs, str(directory), manifest.build_manifest(fs, str(directory), step=step))
    return directory


def test_latest_committed_skips_torn_directories_and_keeps_the_callers_uri(tmp_path: Path) -> None:
    fs, path = filesystem(str(tmp_path))
    assert manifest.latest_committed(fs, path) is None  # nothing yet (and no error)
    _commit_step(tmp_path, 5, {"a": b"x"})
    _commit_step(tmp_path, 20, {"a": b"y"})
    (tmp_path / "step30").mkdir()  # a crashed save: no MANIFEST
    (tmp_path / "step30" / "a").write_bytes(b"half")
    (tmp_path / "notes").mkdir()
    assert manifest.latest_committed(fs, path) == (20, f"{path}/step20")
    assert manifest.latest_committed(fs, path, uri=tmp_path.as_uri()) == (20, f"{tmp_path.as_uri()}/step20")
    assert [s for s, _ in manifest.step_dirs(fs, path)] == [5, 20, 30]
    assert [s for s, _ in manifest.committed_steps(fs, path)] == [5, 20]


def test_commit_of_bytes_is_verbatim_and_verify_finds_every_bad_file(tmp_path: Path) -> None:
    src = _commit_step(tmp_path / "src", 3, {f"f{i}": bytes([i]) * (i + 1) for i in range(12)})
    fs, _ = filesystem(str(tmp_path))
    blob = (src / layout.MANIFEST_NAME).read_bytes()
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in src.iterdir():
        if item.name != layout.MANIFEST_NAME:
            (copy / item.name).write_bytes(item.read_bytes())
    manifest.commit(fs, str(copy), blob)
    assert (copy / layout.MANIFEST_NAME).read_bytes() == blob
    assert not (copy / f"{layout.MANIFEST_NAME}.tmp").exists()
    assert manifest.verify(fs, str(copy), workers=4).ok
    (copy / "f3").write_bytes(b"\x03" * 3 + b"!")  # wrong size
    (copy / "f7").write_bytes(b"\x00" * 8)  # same size, other bytes
    (copy / "f9").unlink()
    report = manifest.verify(fs, str(copy), uri="file://copy", workers=4)
    assert (report.ok, report.checked, report.corrupted, report.missing) == (False, 13, ["f3", "f7"], ["f9"])
    assert report.summary() == "file://copy: FAILED (1 missing, 2 corrupted of 13 files)"


def test_a_manifest_of_another_format_does_not_commit(tmp_path: Path) -> None:
    directory = _commit_step(tmp_path, 1, {"a": b"x"})
    record = json.loads((directory / layout.MANIFEST_NAME).read_text())
    (directory / layout.MANIFEST_NAME).write_text(json.dumps({**record, "format": "other/v9"}))
    fs, path = filesystem(str(tmp_path))
    assert manifest.read_manifest(fs, str(directory)) is None
    assert manifest.latest_committed(fs, path) is None
    assert not manifest.verify(fs, str(directory)).committed


def test_layout_and_manifest_import_no_torch() -> None:
    code = "import sys, olmo_trainer.layout, olmo_trainer.manifest; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_name_with_a_trailing_newline_is_no_step_and_no_segment() -> None:
    """Python's `$` matches before a final newline: `step5\\n` must not read as step 5."""
    assert layout.parse_step_name("step5\n") is None and layout.parse_step_name("step5") == 5
    assert layout.parse_metrics_segment_name("3.jsonl\n") is None
    assert layout.parse_metrics_segment_name("3.jsonl") is not None
