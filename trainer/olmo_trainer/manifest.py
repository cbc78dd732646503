"""Checkpoint MANIFEST: the commit record that makes a `step<N>/` directory exist. Torch-free.

A checkpoint directory is committed by `MANIFEST.json`, written last, which lists the sha256 and
size of every other file. A directory without it is incomplete and is ignored (and cleaned).
This module is the ONE implementation of committing (`commit`), reading (`read_manifest`),
verifying (`verify`, files re-hashed in parallel) and finding (`latest_committed`) checkpoints; the
trainer's Checkpointer and soup, and the operator's archive, reconcile and CLI all call it. The names
of files and directories come from layout.py. All I/O goes through fsspec, so the same code works on
local disks, s3:// and gs://; this module imports no torch (the operator image has none). How storage
is reached (filesystem, open_output, sha256_file) is storage.py's.

    fs, path = filesystem("s3://bucket/run/phases/pretrain/checkpoints/step100")
    record = build_manifest(fs, path, step=100, config_hash="...")
    commit(fs, path, record)                       # atomic where the filesystem allows
    report = verify(fs, path)                      # re-hash every file (8 threads)
    latest_committed(fs, "/ckpt", uri="s3://bucket/ckpt")   # (100, 's3://bucket/ckpt/step100') or None
"""

from __future__ import annotations

import datetime as dt
import io
import json
import pickle
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from fsspec import AbstractFileSystem

from olmo_trainer.layout import MANIFEST_NAME, join, manifest_path, parse_step_name, step_of, step_uri
from olmo_trainer.storage import sha256_file, write_atomic

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "NotACheckpointError",
    "Resolved",
    "VerifyReport",
    "build_manifest",
    "commit",
    "committed_steps",
    "content_sha256",
    "encode",
    "latest_committed",
    "list_files",
    "read_manifest",
    "resolve_checkpoint",
    "step_dirs",
    "verify",
    "verify_file",
]

FORMAT = "olmorun.checkpoint/v1"
DCP_METADATA = ".metadata"
"""torch.distributed.checkpoint's index of a checkpoint: which shard file holds each tensor. Every
checkpoint of this project is a DCP one, so a MANIFEST that lacks it, or lacks a shard it names,
describes a checkpoint that cannot be loaded (torch filesystem.py `_metadata_fn`)."""
VERIFY_WORKERS = 8
"""Files re-hashed at once by `verify`: hashlib releases the GIL, and object stores serve reads in
parallel."""


def list_files(fs: AbstractFileSystem, directory: str) -> list[str]:
    """Relative paths of every file under a directory, sorted, excluding the MANIFEST."""
    root = directory.rstrip("/")
    found = fs.find(root, detail=False)
    relative = [str(p)[len(root) + 1 :] for p in found]
    return sorted(p for p in relative if p and p != MANIFEST_NAME)


def build_manifest(
    fs: AbstractFileSystem,
    directory: str,
    *,
    step: int,
    config_hash: str | None = None,
    parent: str | None = None,
    extra: dict[str, Any] | None = None,
    known: dict[str, dict[str, Any]] | None = None,
    content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file of a checkpoint directory into a manifest (not yet written).

    `known` holds entries ({"sha256", "size"} by relative path) already hashed elsewhere, e.g. by the
    rank that wrote the shard, so that one process does not re-read a whole sharded checkpoint.
    `content` is the checkpoint's content identity (olmo_trainer.identity.content_record): a hash of
    its tensors by name that does not depend on file layout, world size or storage path.
    """
    files = {}
    for rel in list_files(fs, directory):
        path = join(directory, rel)
        if known and rel in known:
            files[rel] = {"sha256": known[rel]["sha256"], "size": int(known[rel]["size"])}
        else:
            files[rel] = {"sha256": sha256_file(fs, path), "size": int(fs.size(path))}
    return {
        "format": FORMAT,
        "step": step,
        "configHash": config_hash,
        "parent": parent,
        "createdAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
        **({"extra": extra} if extra else {}),
        **({"content": content} if content else {}),
    }


def content_sha256(record: dict[str, Any] | None) -> str | None:
    """The content identity of a checkpoint from its MANIFEST (None for checkpoints made before it
    existed)."""
    content = (record or {}).get("content")
    return content.get("sha256") if isinstance(content, dict) else None


def encode(record: Mapping[str, Any]) -> bytes:
    """The bytes of a MANIFEST as written (sorted keys: the same record always gives the same bytes)."""
    return json.dumps(record, indent=2, sort_keys=True).encode()


def commit(fs: AbstractFileSystem, directory: str, record: Mapping[str, Any] | bytes) -> None:
    """Write the MANIFEST last, which commits the directory: a new record, or the exact bytes of an
    existing MANIFEST (an archive copies it verbatim). Local filesystems get an atomic rename; object
    stores a single PUT, which is atomic there. Raises the filesystem's OSError when it cannot write."""
    write_atomic(fs, manifest_path(directory), record if isinstance(record, bytes) else encode(record))


def read_manifest(fs: AbstractFileSystem, directory: str) -> dict[str, Any] | None:
    """The manifest of a directory, or None when it is not committed (or unreadable)."""
    try:
        data = json.loads(fs.cat_file(manifest_path(directory)))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return None
    return data


@dataclass
class VerifyReport:
    """The result of checking a checkpoint directory against its MANIFEST."""

    uri: str
    committed: bool
    checked: int = 0
    """Files listed in the MANIFEST (each re-hashed)."""
    missing: list[str] = field(default_factory=list)
    """Listed in the MANIFEST, absent from the directory."""
    corrupted: list[str] = field(default_factory=list)
    """Files whose size or sha256 differs from the MANIFEST."""
    unlisted: list[str] = field(default_factory=list)
    """In the directory, absent from the MANIFEST: written after the commit, or left out of it."""
    incomplete: list[str] = field(default_factory=list)
    """What a DCP checkpoint needs that the MANIFEST lacks: `.metadata`, or the shard files it names
    (`.metadata (unreadable)` when it is no DCP index)."""
    problems: dict[str, str] = field(default_factory=dict)
    """What is wrong with each missing or corrupted file, in words (file_problem): `truncated: 10 of 300
    bytes`, `sha256 differs from MANIFEST (same size: ...)`, `not found`."""

    @property
    def ok(self) -> bool:
        return self.committed and not (self.missing or self.corrupted or self.unlisted or self.incomplete)

    def summary(self) -> str:
        if not self.committed:
            return f"{self.uri}: NOT COMMITTED (no valid {MANIFEST_NAME})"
        if self.ok:
            return f"{self.uri}: OK ({self.checked} files verified)"
        parts = [f"{len(self.missing)} missing", f"{len(self.corrupted)} corrupted"]
        if self.unlisted:
            parts.append(f"{len(self.unlisted)} not in {MANIFEST_NAME}")
        detail = f"{', '.join(parts)} of {self.checked} files"
        if self.incomplete:
            detail += f"; {MANIFEST_NAME} lacks {', '.join(self.incomplete)}"
        return f"{self.uri}: FAILED ({detail})"


class _Inert:
    """An object of a `.metadata` pickle rebuilt as data only: the arguments and state it was saved with."""

    args: tuple[Any, ...] = ()
    state: Any = None

    def __init__(self, *args: Any, **_: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _InertUnpickler(pickle.Unpickler):
    """Every class a pickle names becomes an _Inert subclass: no code of the file runs, no torch needed."""

    def find_class(self, module: str, name: str) -> type[_Inert]:
        return type(name, (_Inert,), {"__module__": f"inert.{module}"})


def dcp_shard_names(blob: bytes) -> set[str]:
    """The shard files that a DCP `.metadata` names: the `relative_path` of every storage entry.

    `.metadata` is a pickle of torch.distributed.checkpoint.metadata.Metadata whose `storage_data`
    maps each tensor chunk to a `_StorageInfo(relative_path, offset, length)` (torch
    distributed/checkpoint/filesystem.py). Read without torch and without running any code of the
    file. Raises ValueError when the blob is not such a pickle.
    """
    try:
        root = _InertUnpickler(io.BytesIO(blob)).load()
    except Exception as error:  # any malformed pickle: truncated, foreign, not a pickle at all
        raise ValueError(f"not a DCP {DCP_METADATA}: {error}") from None
    storage = (
        root.state.get("storage_data") if isinstance(root, _Inert) and isinstance(root.state, dict) else None
    )
    if not isinstance(storage, dict):
        raise ValueError(f"not a DCP {DCP_METADATA}: no storage_data")
    names = set()
    for info in storage.values():
        path = (
            info.state.get("relative_path")
            if isinstance(info, _Inert) and isinstance(info.state, dict)
            else None
        )
        if not isinstance(path, str):
            raise ValueError(f"not a DCP {DCP_METADATA}: a storage entry has no relative_path")
        names.add(path)
    return names


def completeness(
    fs: AbstractFileSystem, directory: str, files: dict[str, Any], damaged: set[str]
) -> tuple[list[str], list[str]]:
    """(unlisted, incomplete) of a checkpoint whose MANIFEST lists `files` (see VerifyReport).

    `damaged` holds the listed files already found missing or corrupted: a damaged `.metadata` says
    nothing about the shards, so it is not read."""
    unlisted = [rel for rel in list_files(fs, directory) if rel not in files]
    if DCP_METADATA not in files:
        return unlisted, [DCP_METADATA]
    if DCP_METADATA in damaged:
        return unlisted, []
    try:
        names = dcp_shard_names(fs.cat_file(join(directory, DCP_METADATA)))
    except ValueError:
        return unlisted, [f"{DCP_METADATA} (unreadable)"]
    return unlisted, sorted(names - set(files))


def verify_file(
    fs: AbstractFileSystem, path: str, expected: Mapping[str, Any]
) -> Literal["missing", "corrupted"] | None:
    """None when the file matches its MANIFEST entry ({"sha256", "size"}), else 'missing' or 'corrupted'."""
    problem = file_problem(fs, path, expected)
    return None if problem is None else "missing" if problem == MISSING else "corrupted"


MISSING = "not found"
"""What file_problem says of a file listed in the MANIFEST that is not there."""


def file_problem(fs: AbstractFileSystem, path: str, expected: Mapping[str, Any]) -> str | None:
    """None when the file matches its MANIFEST entry, else what is wrong with it, in words: MISSING,
    `truncated: N of M bytes`, `N bytes, MANIFEST says M`, or `sha256 differs from MANIFEST (same size)`
    (bits changed in place)."""
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        return MISSING
    want = int(expected["size"])
    if size < want:
        return f"truncated: {size} of {want} bytes"
    if size != want:
        return f"{size} bytes, MANIFEST says {want}"
    if sha256_file(fs, path) != expected["sha256"]:
        return "sha256 differs from MANIFEST (same size: bytes changed in place)"
    return None


def verify(
    fs: AbstractFileSystem, directory: str, uri: str | None = None, *, workers: int = VERIFY_WORKERS
) -> VerifyReport:
    """Check a checkpoint directory against its MANIFEST: every listed file re-hashed (`workers` files
    at a time), every file of the directory listed, and every file its DCP `.metadata` names listed.
    `ok` only when all hold.

    An uncommitted directory gives a report with committed=False. Storage errors other than a missing
    file (refused credentials, an unreachable endpoint) propagate from fsspec.
    """
    directory = directory.rstrip("/")
    record = read_manifest(fs, directory)
    report = VerifyReport(uri=uri or directory, committed=record is not None)
    if record is None:
        return report
    files = sorted(record["files"].items())

    def check(item: tuple[str, dict[str, Any]]) -> str | None:
        return file_problem(fs, join(directory, item[0]), item[1])

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
        problems = list(pool.map(check, files))
    report.checked = len(files)
    report.problems = {rel: p for (rel, _), p in zip(files, problems, strict=True) if p is not None}
    report.missing = [rel for rel, p in report.problems.items() if p == MISSING]
    report.corrupted = [rel for rel, p in report.problems.items() if p != MISSING]
    listed = record["files"]
    report.unlisted, report.incomplete = completeness(
        fs, directory, listed, {*report.missing, *report.corrupted}
    )
    return report


def step_dirs(
    fs: AbstractFileSystem, checkpoints_dir: str, *, uri: str | None = None
) -> list[tuple[int, str]]:
    """Every `step<N>/` directory (committed or not) as (N, location), by step ascending.

    The location is `<uri>/step<N>` when the caller's URI of `checkpoints_dir` is given (keeping its
    protocol), else the filesystem path.
    """
    try:
        entries = fs.ls(checkpoints_dir.rstrip("/"), detail=True)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        step = parse_step_name(str(entry["name"]).rstrip("/").rsplit("/", 1)[-1])
        if step is not None:
            found.append((step, step_uri(uri or checkpoints_dir, step)))
    return sorted(found)


def committed_steps(
    fs: AbstractFileSystem, checkpoints_dir: str, *, uri: str | None = None
) -> list[tuple[int, str]]:
    """The committed `step<N>/` directories (those with a valid MANIFEST) as (N, location), ascending."""
    return [
        (step, location)
        for step, location in step_dirs(fs, checkpoints_dir, uri=uri)
        if read_manifest(fs, step_uri(checkpoints_dir, step)) is not None
    ]


def latest_committed(
    fs: AbstractFileSystem, checkpoints_dir: str, *, uri: str | None = None
) -> tuple[int, str] | None:
    """The newest committed checkpoint under `checkpoints_dir` as (N, location), or None.

    Uncommitted (torn) step directories never count, however new.
    """
    for step, location in reversed(step_dirs(fs, checkpoints_dir, uri=uri)):
        if read_manifest(fs, step_uri(checkpoints_dir, step)) is not None:  # newest first: one read usually
            return step, location
    return None


class NotACheckpointError(ValueError):
    """A URI names neither a checkpoint directory nor a directory of `step<N>/` checkpoints."""


class Resolved(NamedTuple):
    """The checkpoint a URI means (`resolve_checkpoint`), and how it was chosen, in words (or None)."""

    uri: str
    note: str | None


def resolve_checkpoint(fs: AbstractFileSystem, path: str, uri: str) -> Resolved:
    """Which checkpoint `uri` (at `path` on `fs`) means: the one home of this rule for every command
    that takes a checkpoint (`olmorun verify`, `export-hf`, `eval`).

    - a committed directory is itself;
    - a directory of `step<N>/` (checkpoints/, an archive) means its newest committed step;
    - a directory of steps none of which is committed means its newest step (which then fails
      verification as NOT COMMITTED: the data is bad, not the request), with a note saying so;
    - a `step<N>` directory without a MANIFEST is itself (NOT COMMITTED, likewise).

    Raises NotACheckpointError for anything else (nothing there, or no `step<N>/` inside).
    """
    if read_manifest(fs, path) is not None:
        return Resolved(uri, None)
    latest = latest_committed(fs, path, uri=uri)
    if latest is not None:
        return Resolved(latest[1], f"latest committed checkpoint: step {latest[0]}")
    steps = step_dirs(fs, path, uri=uri)
    if steps:
        return Resolved(steps[-1][1], f"no committed checkpoint among {len(steps)} step directories")
    if step_of(uri) is not None and fs.exists(path):
        return Resolved(uri, None)
    raise NotACheckpointError(f"{uri} is not a checkpoint: no {MANIFEST_NAME} and no stepN/ directories")
