"""A job's metrics record: one JSON object per line, written by rank 0, read back as ONE ordered stream.

Torch-free (the operator reads it too). Where it lives is olmo_trainer.layout's:

    <save_dir>/metrics.jsonl                 a local disk: one file, each line appended and flushed
    <save_dir>/metrics.jsonl.d/<seq>.jsonl   an object store: numbered segments

Object stores cannot append. Re-uploading the whole file every 30 s costs O(lines) per flush, so
O(steps^2) over a run; here a flush re-uploads only the current segment, which is closed once it
holds `SEGMENT_BYTES`, so a flush costs at most one segment and a whole run O(steps).

Readers never see the difference: `read_text`, `read_records` and `tail_text` give the concatenation of
metrics.jsonl (a local file, or one an older release uploaded whole) and then every segment in
order. A torn last line (a kill mid-write on a local disk) is skipped by every reader.

    writer = MetricsFile(save_dir, resume_step=100)   # drops lines of steps > 100 (redone work)
    writer.append({"step": 101, "loss": 2.5}); writer.close()
    rows = read_records(*filesystem(save_dir))           # one list, in the order they were written
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from fsspec import AbstractFileSystem

from olmo_trainer.layout import (
    metrics_segment_uri,
    metrics_segments_dir,
    metrics_uri,
    parse_metrics_segment_name,
)
from olmo_trainer.storage import filesystem, is_local

SEGMENT_BYTES = 1 << 20
"""A segment is closed (the next flush starts a new one) once it holds this many bytes: ~3000 lines
of ~300 bytes, so a flush uploads at most ~1 MiB and a million-step run leaves ~300 segments."""


# ---------------------------------------------------------------------------------------------
# Reading: the parts in order, concatenated
# ---------------------------------------------------------------------------------------------


def parts(fs: AbstractFileSystem, save_dir: str) -> list[str]:
    """Paths of the record's files in stream order: metrics.jsonl when it exists, then the segments by seq."""
    out = [metrics_uri(save_dir)] if fs.exists(metrics_uri(save_dir)) else []
    return out + [path for _, path in _segments(fs, save_dir)]


def _segments(fs: AbstractFileSystem, save_dir: str) -> list[tuple[int, str]]:
    directory = metrics_segments_dir(save_dir)
    fs.invalidate_cache(directory)  # segments written since the last look (another process, a flush)
    try:
        names = fs.ls(directory, detail=False)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        seq = parse_metrics_segment_name(str(name).rstrip("/").rsplit("/", 1)[-1])
        if seq is not None:
            found.append((seq, metrics_segment_uri(save_dir, seq)))
    return sorted(found)


def _text(fs: AbstractFileSystem, path: str, start: int = 0) -> str:
    try:
        blob = fs.cat_file(path, start=start or None)
    except FileNotFoundError:  # removed between the listing and the read (a resume truncating)
        return ""
    text = bytes(blob).decode(errors="replace")
    # A part that ends mid-line (torn) must not glue its fragment to the next part's first line.
    return text if not text or text.endswith("\n") else text + "\n"


def read_text(fs: AbstractFileSystem, save_dir: str) -> str:
    """The whole record as one text ("" when there is none)."""
    return "".join(_text(fs, path) for path in parts(fs, save_dir))


def read_records(fs: AbstractFileSystem, save_dir: str) -> list[dict[str, Any]]:
    """Every JSON object of the record, in order; torn or non-object lines are skipped."""
    return rows_of(read_text(fs, save_dir))


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object of one metrics line; None for a line torn by a kill, nested too deeply to read, or
    not an object. The one parser of a metrics line: every reader (rows_of, clean_lines, the operator's
    observe.last_metrics) skips exactly what it skips."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


def rows_of(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a metrics text, in order; lines that do not parse (torn by a kill) are skipped."""
    return [row for line in text.splitlines() if (row := parse_line(line)) is not None]


def tail_text(fs: AbstractFileSystem, save_dir: str, limit: int) -> str:
    """About the last `limit` bytes of the record (whole lines but possibly the first): what a reader of
    the latest step needs, without reading a long run's whole history."""
    chunks: list[str] = []
    remaining = limit
    for path in reversed(parts(fs, save_dir)):
        try:
            size = int(fs.size(path))
        except FileNotFoundError:
            continue
        chunks.append(_text(fs, path, start=max(0, size - remaining)))
        remaining -= size
        if remaining <= 0:
            break
    return "".join(reversed(chunks))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def clean_lines(text: str, *, up_to_step: int | None) -> list[str]:
    """Parseable lines whose step is <= up_to_step (all parseable lines when None)."""
    kept = []
    for line in text.splitlines():
        record = parse_line(line)  # None: a line torn by a kill (or nested too deeply to read)
        if record is not None and (up_to_step is None or record.get("step", 0) <= up_to_step):
            kept.append(line)
    return kept


def _lines_text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def truncate(fs: AbstractFileSystem, save_dir: str, *, up_to_step: int) -> tuple[str | None, list[str]]:
    """Drop every line of a step beyond `up_to_step` (work a resume redoes) and every torn line.

    The record was written in step order, so from the first part that loses a line on, every later
    part goes: those are deleted last-first, then that part is rewritten with what it keeps. A kill in
    between leaves lines of later steps only, which the next resume drops again.
    Returns (the last part that remains or None, its kept lines).
    """
    found = parts(fs, save_dir)
    kept: list[list[str]] = []
    first_cut = None
    for index, path in enumerate(found):
        text = _text(fs, path)
        lines = clean_lines(text, up_to_step=up_to_step)
        kept.append(lines)
        if len(lines) != len(text.splitlines()):
            first_cut = index
            break
    if first_cut is None:
        return (found[-1], kept[-1]) if found else (None, [])
    for path in reversed(found[first_cut + 1 :]):
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
    fs.pipe_file(found[first_cut], _lines_text(kept[first_cut]))
    return found[first_cut], kept[first_cut]


class MetricsFile:
    """The writer: appends to metrics.jsonl on a local disk; on an object store re-uploads the current
    segment at most every `flush_seconds` (and on close), starting a new one past `segment_bytes`.

    `resume_step`: the checkpoint step a job resumes from (lines of later steps are dropped); None for
    a fresh start, which owns the record from scratch.

    `may_write`: asked right before every write to storage (each line on a local disk, each segment
    upload on an object store); when it says no (the job directory's lease belongs to a newer attempt:
    lease.py), nothing is written, then or later, and `fenced` turns True. A zombie attempt thus adds
    no line to the record its successor owns, between its takeover and its own stop.
    """

    def __init__(
        self,
        save_dir: str,
        *,
        resume_step: int | None,
        flush_seconds: float = 30.0,
        segment_bytes: int = SEGMENT_BYTES,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.may_write = may_write
        self.fenced = False
        self.fs, self.root = filesystem(save_dir)
        self.local = is_local(self.fs)
        self.flush_seconds = flush_seconds
        self.segment_bytes = segment_bytes
        self.fs.makedirs(self.root, exist_ok=True)
        self.path = metrics_uri(self.root)
        self._dirty = False
        self._last_upload = 0.0
        last, lines = truncate(self.fs, self.root, up_to_step=resume_step if resume_step is not None else 0)
        if self.local:
            if last is None:
                self.fs.pipe_file(self.path, b"")
            self.seq = 0
            self.lines: list[str] = []
            return
        # Continue the last segment while it has room; metrics.jsonl itself is never appended to here.
        segments = _segments(self.fs, self.root)
        if segments and last == segments[-1][1] and len(_lines_text(lines)) < segment_bytes:
            self.seq, self.lines = segments[-1][0], lines
        else:
            self.seq, self.lines = (segments[-1][0] + 1 if segments else 0), []

    def _allowed(self) -> bool:
        if not self.fenced and self.may_write is not None and not self.may_write():
            self.fenced = True
        return not self.fenced

    def append(self, record: dict[str, Any]) -> None:
        """Add one line (written now on a local disk, at the next due flush on an object store)."""
        line = json.dumps({k: _jsonable(v) for k, v in record.items()})
        if self.local:
            if not self._allowed():
                return
            with self.fs.open(self.path, "a") as stream:
                stream.write(line + "\n")
            return
        self.lines.append(line)
        self._dirty = True
        if time.monotonic() - self._last_upload >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Upload the current segment (object stores); a no-op when nothing changed or on a local disk."""
        if self.local or not self._dirty or not self._allowed():
            return
        blob = _lines_text(self.lines)
        self.fs.pipe_file(metrics_segment_uri(self.root, self.seq), blob)
        self._last_upload = time.monotonic()
        self._dirty = False
        if len(blob) >= self.segment_bytes:
            self.seq, self.lines = self.seq + 1, []

    def close(self) -> None:
        self.flush()


def _jsonable(value: Any) -> Any:
    # NaN/inf are not JSON; a diverged loss is recorded as null rather than breaking the parser.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
