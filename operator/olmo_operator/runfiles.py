"""Read one run's record from storage for `olmorun diff` and `olmorun report` (torch-free, read-only).

A run is named by its run root (`<storage>/<namespace>/<name>`, the directory holding run.json: a
local path, file://, s3:// or gs://) or by an `olmorun local` workdir (state.json; its run root is
found under `<workdir>/storage`). From run.json's spec every job's files are located with layout.py:

    phases/<p>[/s<seed>]/config.json    -> the portable config hash
    <save dir>/env.json                 -> environment and data fingerprints (written by rank 0)
    <save dir>/metrics.jsonl[.d/]       -> one row per step (olmo_trainer.metrics_log: one file or segments)
    <save dir>/checkpoints/stepN/MANIFEST.json (else archive/<job>/stepN/) -> content identity

Missing files are simply absent from the record (a run still in progress, or from an older release).
Credentials for s3:// and gs:// come from the environment (archive.storage_options).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from olmo_operator import api, layout
from olmo_operator.archive import storage_options
from olmo_operator.layout import RUN_NAME
from olmo_operator.local_state import STATE_FILE
from olmo_operator.plan import run_spec_hash
from olmo_operator.rundiff import JobRecord, RunRecord
from olmo_trainer import manifest, metrics_log, storage
from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.layout import ENV_NAME

RUN_PLACEHOLDER = "<run>"


class RunNotFoundError(Exception):
    """The argument names no run: no run.json there (nor under a workdir's storage/)."""


def _fs(uri: str) -> tuple[AbstractFileSystem, str]:
    fs, path = storage.filesystem(uri, **storage_options(uri))
    fs.invalidate_cache()
    return fs, path


def _read_json(uri: str) -> Any:
    fs, path = _fs(uri)
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_root_of(target: str) -> tuple[str, dict[str, Any] | None]:
    """(run root, local status or None) of a run root URI or an `olmorun local` workdir."""
    if "://" not in target and (Path(target) / STATE_FILE).exists():
        found = sorted((Path(target) / "storage").glob(f"*/*/{RUN_NAME}"))
        if len(found) != 1:
            raise RunNotFoundError(
                f"{target}: a workdir, but {len(found)} run.json files under {target}/storage"
            )
        state = json.loads((Path(target) / STATE_FILE).read_text())
        return str(found[0].parent.resolve()), state.get("status")
    root = target.rstrip("/")
    if _read_json(f"{root}/{RUN_NAME}") is None:
        raise RunNotFoundError(
            f"{target}: no {RUN_NAME} here; give a run's root (<storage>/<namespace>/<name>) or an `olmorun "
            "local` workdir"
        )
    return root, None


def _run_at(document: dict[str, Any], root: str) -> api.OlmoRun:
    """The run of run.json, with its storage pointed at `root` (the run may have been moved or copied)."""
    run = api.parse_olmorun(
        {k: document[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in document}
    )
    suffix = f"/{run.namespace}/{run.name}"
    base = root[: -len(suffix)] if root.endswith(suffix) else run.spec.storage.uri
    scratch = run.spec.storage.scratch_uri
    if scratch == run.spec.storage.uri:
        scratch = None
    store = run.spec.storage.model_copy(update={"uri": base, "scratch_uri": scratch})
    return run.model_copy(update={"spec": run.spec.model_copy(update={"storage": store})})


def root_pattern(run: api.OlmoRun) -> re.Pattern[str]:
    """Any URI or path of a file inside this run (`.../<namespace>/<name>/...`), wherever its storage
    is: the run's own, a copy, or the run it was copied from.

    A value that is itself a path or URI is matched from its start, so a local root with spaces
    (`/tmp/my run/...`) is replaced whole; inside other text (a command line) a root ends at white space.
    """
    tail = rf"/{re.escape(run.namespace)}/{re.escape(run.name)}(?=/|$)"
    return re.compile(rf"(?:^(?:/|[A-Za-z][A-Za-z0-9+.-]*:)[^\"'\n]*?|[^\s\"']*?){tail}")


def portable(value: Any, roots: re.Pattern[str]) -> Any:
    """`value` with the storage roots of the run replaced by `<run>`: two runs of one spec in two
    directories have equal configs (init_from/soup_from name the parent inside the run)."""
    if isinstance(value, str):
        return roots.sub(RUN_PLACEHOLDER, value)
    if isinstance(value, list):
        return [portable(v, roots) for v in value]
    if isinstance(value, dict):
        return {k: portable(v, roots) for k, v in value.items()}
    return value


def portable_config_hash(config: dict[str, Any], roots: re.Pattern[str]) -> str:
    """TrainConfig.config_hash (what is trained: not where it is written, nor whose run it is) of the
    config with the run's storage roots replaced; a config this release cannot parse is hashed as it is."""
    trimmed = portable(config, roots)
    try:
        return TrainConfig.model_validate(trimmed).config_hash()
    except ValueError:
        return hash_json({k: v for k, v in trimmed.items() if k != "saveDir"})


def _metrics(save_dir: str) -> list[dict[str, Any]]:
    fs, path = _fs(save_dir)
    return metrics_log.read_rows(fs, path.rstrip("/"))


def _checkpoints(directories: list[str]) -> tuple[dict[int, dict[str, Any] | None], str | None]:
    """(committed step -> MANIFEST content, createdAt of the newest), from the first directory holding any."""
    for directory in directories:
        fs, path = _fs(directory)
        found, created = {}, None
        for step, step_path in manifest.committed_steps(fs, path):
            record = manifest.read_manifest(fs, step_path) or {}
            found[step], created = record.get("content"), record.get("createdAt")
        if found:
            return found, created
    return {}, None


def read_job(run: api.OlmoRun, phase: api.PhaseSpec, seed: int, roots: re.Pattern[str]) -> JobRecord:
    save = layout.save_dir(run, phase, seed)
    config = _read_json(layout.config_uri(run, phase, seed))
    checkpoints, finished = _checkpoints([layout.checkpoints_dir(save), layout.archive_dir(run, phase, seed)])
    return JobRecord(
        phase=phase.name,
        seed=seed,
        kind=phase.kind,
        config_hash=portable_config_hash(config, roots) if isinstance(config, dict) else None,
        env=portable(_read_json(f"{save}/{ENV_NAME}"), roots),
        metrics=portable(_metrics(save), roots),
        checkpoints=checkpoints,
        finished_at=finished,
    )


def read_run(target: str) -> RunRecord:
    """The whole record of a run (see the module docstring). Raises RunNotFoundError."""
    root, status = run_root_of(target)
    document = _read_json(f"{root}/{RUN_NAME}")
    run = _run_at(document, root)
    roots = root_pattern(run)
    jobs = [
        read_job(run, phase, seed, roots)
        for phase in api.topological_order(run)
        for seed in layout.job_seeds(run, phase)
    ]
    spec = document.get("spec") or {}
    return RunRecord(
        uri=root,
        name=run.name,
        spec_hash=run_spec_hash(run),
        spec=spec,
        run_json=document,
        jobs=jobs,
        status=status,
    )
