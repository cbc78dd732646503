"""Checkpoint MANIFEST: the commit record that makes a `stepN/` directory exist.

A checkpoint directory is committed by `MANIFEST.json`, written last, which lists the sha256 and
size of every other file. A directory without it is incomplete and is ignored (and cleaned).
This module imports no torch: the operator's archive and `olmorun verify` use it too. All I/O goes
through fsspec, so the same code works on local disks, s3:// and gs://.

    manifest = build_manifest(fs, "/ckpt/step100", step=100, config_hash="...")
    commit(fs, "/ckpt/step100", manifest)          # atomic where the filesystem allows
    report = verify(fs, "/ckpt/step100")           # re-hash every file
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "olmorun.checkpoint/v1"
STEP_DIR = re.compile(r"^step(\d+)$")
_CHUNK = 8 * 1024 * 1024


def filesystem(uri: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a URI and the path inside it (plain paths are local)."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return fs, path


def sha256_file(fs: AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
        path = f"{directory.rstrip('/')}/{rel}"
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
    """The content identity of a checkpoint from its MANIFEST (None for checkpoints made before it existed)."""
    content = (record or {}).get("content")
    return content.get("sha256") if isinstance(content, dict) else None


def commit(fs: AbstractFileSystem, directory: str, manifest: dict[str, Any]) -> None:
    """Write the MANIFEST last. Local filesystems get an atomic rename; object stores a single PUT."""
    target = f"{directory.rstrip('/')}/{MANIFEST_NAME}"
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if _is_local(fs):
        tmp = f"{target}.tmp"
        with fs.open(tmp, "wb") as stream:
            stream.write(blob)
        fs.mv(tmp, target)
    else:
        fs.pipe_file(target, blob)


def read_manifest(fs: AbstractFileSystem, directory: str) -> dict[str, Any] | None:
    """The manifest of a directory, or None when it is not committed (or unreadable)."""
    target = f"{directory.rstrip('/')}/{MANIFEST_NAME}"
    try:
        data = json.loads(fs.cat_file(target))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return None
    return data


@dataclass
class VerifyReport:
    """The result of re-hashing a checkpoint against its MANIFEST."""

    uri: str
    committed: bool
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    """Files whose size or sha256 differs from the MANIFEST."""

    @property
    def ok(self) -> bool:
        return self.committed and not self.missing and not self.corrupted

    def summary(self) -> str:
        if not self.committed:
            return f"{self.uri}: NOT COMMITTED (no valid {MANIFEST_NAME})"
        if self.ok:
            return f"{self.uri}: OK ({self.checked} files verified)"
        parts = [f"{len(self.missing)} missing", f"{len(self.corrupted)} corrupted"]
        return f"{self.uri}: FAILED ({', '.join(parts)} of {self.checked} files)"


def verify_file(fs: AbstractFileSystem, path: str, expected: dict[str, Any]) -> str | None:
    """None when the file matches, else 'missing' or 'corrupted'."""
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        return "missing"
    if size != expected["size"] or sha256_file(fs, path) != expected["sha256"]:
        return "corrupted"
    return None


def verify(fs: AbstractFileSystem, directory: str, uri: str | None = None) -> VerifyReport:
    """Re-hash every file of a committed checkpoint against its MANIFEST."""
    manifest = read_manifest(fs, directory)
    report = VerifyReport(uri=uri or directory, committed=manifest is not None)
    if manifest is None:
        return report
    for rel, expected in sorted(manifest["files"].items()):
        report.checked += 1
        problem = verify_file(fs, f"{directory.rstrip('/')}/{rel}", expected)
        if problem == "missing":
            report.missing.append(rel)
        elif problem == "corrupted":
            report.corrupted.append(rel)
    return report


def step_dirs(fs: AbstractFileSystem, checkpoints_dir: str) -> list[tuple[int, str]]:
    """Every `stepN/` directory (committed or not), by step ascending."""
    try:
        entries = fs.ls(checkpoints_dir.rstrip("/"), detail=True)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        match = STEP_DIR.match(name)
        if match:
            found.append((int(match.group(1)), f"{checkpoints_dir.rstrip('/')}/{name}"))
    return sorted(found)


def committed_steps(fs: AbstractFileSystem, checkpoints_dir: str) -> list[tuple[int, str]]:
    """The committed `stepN/` directories (those with a valid MANIFEST), by step ascending."""
    return [(step, path) for step, path in step_dirs(fs, checkpoints_dir) if read_manifest(fs, path) is not None]


def latest_committed(fs: AbstractFileSystem, checkpoints_dir: str) -> tuple[int, str] | None:
    steps = committed_steps(fs, checkpoints_dir)
    return steps[-1] if steps else None


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
