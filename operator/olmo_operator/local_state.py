"""The embedded runner's status store and storage: `<workdir>/state.json`, and where a local run keeps files.

    run = localize(parse_olmorun(document), workdir)          # storage under the workdir unless told
    otherwise
    state = start_state(run, document, workdir, now)          # resume an earlier invocation of the same run
    write_state(workdir, state)                               # atomic: never a half-written state file

The state file is the local stand-in for the API server: the spec as the user wrote it, its
generation (bumped when the spec changes between invocations), the status (`olmorun status`), and
the live processes of every running job (pid, pgid, start time, boot id: local_procs.py), so that a
runner started after this one died finds them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmo_operator.api import OlmoRun, OlmoRunStatus
from olmo_trainer.config import hash_json
from olmo_trainer.storage import path_to_uri, replacing

STATE_FILE = "state.json"


def default_workdir(run: OlmoRun) -> Path:
    return Path(".olmorun") / run.name


def localize(run: OlmoRun, workdir: Path, storage: str | None = None) -> OlmoRun:
    """The run as `olmorun local` executes it: storage under the workdir unless told otherwise.

    storage: None -> `file://<workdir>/storage`; "spec" -> the spec's own URIs; anything else -> that URI.
    """
    if storage == "spec":
        return run
    uri = storage or path_to_uri(workdir.resolve() / "storage")
    store = run.spec.storage.model_copy(update={"uri": uri, "scratch_uri": None})
    return run.model_copy(update={"spec": run.spec.model_copy(update={"storage": store})})


@dataclass
class State:
    """What `<workdir>/state.json` holds: the spec as given, its generation, and the status."""

    document: dict[str, Any]
    status: OlmoRunStatus
    generation: int
    spec_hash: str
    created_at: str
    processes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Job name -> its live processes when the state was written (local_procs.ProcessRecord.to_json)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "document": self.document,
                "generation": self.generation,
                "specHash": self.spec_hash,
                "createdAt": self.created_at,
                "status": self.status.model_dump(mode="json", by_alias=True, exclude_none=True),
                "processes": self.processes,
            },
            indent=2,
        )


def read_state(workdir: Path) -> State | None:
    path = workdir / STATE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return State(
        document=data["document"],
        status=OlmoRunStatus.model_validate(data.get("status") or {}),
        generation=int(data.get("generation", 1)),
        spec_hash=data.get("specHash", ""),
        created_at=data.get("createdAt", ""),
        processes=dict(data.get("processes") or {}),
    )


def write_state(workdir: Path, state: State) -> None:
    """Atomic replace: an interrupted write never leaves a half state file behind."""
    with replacing(workdir / STATE_FILE) as partial:
        Path(partial).write_text(state.to_json())


def start_state(run: OlmoRun, document: dict[str, Any], workdir: Path, now: dt.datetime) -> State:
    """Resume the state of an earlier invocation (same run name), bumping the generation on a spec edit.

    The recorded processes are kept whatever the run: they may still be alive and must be found.
    """
    spec_hash = hash_json(run.spec.model_dump(mode="json", by_alias=True))
    old = read_state(workdir)
    stamp = now.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    if old is None or old.document.get("metadata", {}).get("name") != run.name:
        return State(document, OlmoRunStatus(), 1, spec_hash, stamp, old.processes if old else {})
    generation = old.generation + (old.spec_hash != spec_hash)
    return State(document, old.status, generation, spec_hash, old.created_at or stamp, old.processes)
