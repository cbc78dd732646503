"""The metrics record on object storage (SeaweedFS): written in segments, read back as one file.

Object stores cannot append; the record used to be re-uploaded whole every 30 s, quadratic over a run.
Now a flush uploads only the current segment (metrics_log.MetricsFile), every reader
(metrics_log.read_records, observe.last_metrics, runfiles) sees one ordered stream, and a resume drops
the lines of steps beyond its checkpoint in whichever segment they are. Byte counts come from a spy
that wraps the real s3fs `pipe_file` (it still uploads), not from a mock.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from olmo_operator.observe import last_metrics
from olmo_trainer import metrics_log
from olmo_trainer.layout import metrics_segments_dir, metrics_uri
from olmo_trainer.storage import filesystem
from tests.s3server import S3Server


@pytest.fixture
def save_dir(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh save dir on the server; the writer finds its credentials in the environment, as in a pod."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.make_bucket("metrics-" + secrets.token_hex(4))
    return f"{bucket}/ns/run/phases/pretrain"


def _row(step: int) -> dict[str, Any]:
    return {"step": step, "tokens": 64 * step, "loss": 10.0 - step / 100, "tokens_per_s": 1234.5}


def _count_uploads(writer: metrics_log.MetricsFile) -> list[int]:
    """Bytes of every upload the writer makes, recorded on the way to the real s3fs call."""
    sizes: list[int] = []
    real = writer.fs.pipe_file

    def spy(path: str, value: bytes, **kwargs: Any) -> Any:
        sizes.append(len(value))
        return real(path, value, **kwargs)

    writer.fs.pipe_file = spy
    return sizes


def test_uploaded_bytes_grow_linearly_and_readers_see_one_stream(save_dir: str, s3_server: S3Server) -> None:
    writer = metrics_log.MetricsFile(save_dir, resume_step=None, flush_seconds=0.0, segment_bytes=2048)
    sizes = _count_uploads(writer)
    steps = 240
    for step in range(1, steps + 1):
        writer.append(_row(step))
    writer.close()
    line = len(json.dumps(_row(steps))) + 1
    assert len(sizes) == steps  # flush_seconds=0: one upload per line, the worst case
    assert max(sizes) < 2048 + line  # a flush never uploads more than one segment
    first, second = sum(sizes[: steps // 2]), sum(sizes[steps // 2 :])
    # Linear: the second half of the run costs what the first did (whole-file re-uploads: about 3x).
    assert second < 1.3 * first, (first, second)
    total = len(json.dumps(_row(1))) * steps
    assert sum(sizes) < 2048 / line * total  # ~ lines per segment x record size, not steps x record size

    fs = s3_server.filesystem()
    path = save_dir.removeprefix("s3://")
    assert not fs.exists(metrics_uri(path))  # no whole-file copy on the object store
    segments = fs.ls(metrics_segments_dir(path), detail=False)
    assert len(segments) > 5
    rows = metrics_log.read_records(fs, path)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    observed = last_metrics(save_dir, s3_server.storage_options())
    assert observed is not None and (observed.step, observed.tokens) == (steps, 64 * steps)


def test_a_resume_after_a_kill_drops_the_redone_steps_across_segments(
    save_dir: str, s3_server: S3Server
) -> None:
    """The first attempt flushed steps 1..50 and was killed (SIGKILL: no close, its last unflushed lines
    are simply lost); the checkpoint it resumes from is step 30. The record then reads 1..30, the new
    attempt's 31..40 follow, nothing is repeated, and an evaluation line in the last segment is read
    with the last training line's loss from an earlier one."""
    first = metrics_log.MetricsFile(save_dir, resume_step=None, flush_seconds=0.0, segment_bytes=1024)
    for step in range(1, 51):
        first.append(_row(step))
    first.lines.append(json.dumps(_row(51)))  # appended after the last flush: lost with the process
    del first

    fs = s3_server.filesystem()
    path = save_dir.removeprefix("s3://")
    before = len(fs.ls(metrics_segments_dir(path), detail=False))
    second = metrics_log.MetricsFile(save_dir, resume_step=30, flush_seconds=0.0, segment_bytes=1024)
    fs.invalidate_cache()
    assert [r["step"] for r in metrics_log.read_records(fs, path)] == list(range(1, 31))
    assert len(fs.ls(metrics_segments_dir(path), detail=False)) < before  # later segments deleted
    for step in range(31, 41):
        second.append(_row(step))
    second.append({"step": 40, "eval/arith/accuracy": 0.5})
    second.close()
    fs.invalidate_cache()
    assert [r["step"] for r in metrics_log.read_records(fs, path)] == [*range(1, 41), 40]
    observed = last_metrics(save_dir, s3_server.storage_options())
    assert observed is not None and observed.step == 40 and observed.loss == _row(40)["loss"]
    assert observed.eval == {"eval/arith/accuracy": 0.5}

    # A fresh start (resume_step None) owns the record from scratch.
    metrics_log.MetricsFile(save_dir, resume_step=None).close()
    fs.invalidate_cache()
    assert metrics_log.read_records(fs, path) == []


def test_a_whole_file_from_an_older_release_is_read_before_the_segments(
    save_dir: str, s3_server: S3Server
) -> None:
    fs = s3_server.filesystem()
    path = save_dir.removeprefix("s3://")
    fs.pipe_file(metrics_uri(path), "".join(json.dumps(_row(s)) + "\n" for s in range(1, 6)).encode())
    writer = metrics_log.MetricsFile(save_dir, resume_step=5, flush_seconds=0.0)
    writer.append(_row(6))
    writer.close()
    fs.invalidate_cache()
    assert [r["step"] for r in metrics_log.read_records(fs, path)] == [1, 2, 3, 4, 5, 6]
    # Resuming before the old file's end rewrites it and drops the segments after it.
    metrics_log.MetricsFile(save_dir, resume_step=3).close()
    fs.invalidate_cache()
    assert [r["step"] for r in metrics_log.read_records(fs, path)] == [1, 2, 3]


def test_a_local_record_stays_one_appended_file_with_torn_lines_skipped(tmp_path: Path) -> None:
    writer = metrics_log.MetricsFile(str(tmp_path), resume_step=None)
    for step in range(1, 4):
        writer.append(_row(step))
    with (tmp_path / "metrics.jsonl").open("a") as stream:
        stream.write('{"step": 4, "lo')  # a kill mid-line
    fs, root = filesystem(str(tmp_path))
    assert [r["step"] for r in metrics_log.read_records(fs, root)] == [1, 2, 3]
    assert not (tmp_path / "metrics.jsonl.d").exists()
    observed = last_metrics(tmp_path.as_uri())
    assert observed is not None and observed.step == 3
    metrics_log.MetricsFile(str(tmp_path), resume_step=3).close()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3  # the torn line is gone
