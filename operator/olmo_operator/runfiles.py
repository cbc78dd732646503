"""Read one run's record from storage for `olmorun diff` and `olmorun report` (torch-free, read-only).

A run is read where it is given, never elsewhere. It is named by
- its run root: the directory holding run.json (a local path, file://, s3:// or gs://), wherever it is now:
  the run's own `<storage>/<namespace>/<name>`, a local copy, a download of an s3 run, a run moved to
  another bucket. Every file is read under that root (`run_root` and the save dirs map onto it); the
  storage named in its run.json is read only when the root IS that storage;
- an `olmorun local` workdir (state.json): its run root under `<workdir>/storage`, else (a run started
  with `--storage spec`) the spec's own storage;
- a spec file (YAML/JSON): the run root its `spec.storage` names.

From run.json's spec every job's files are located with layout.py:

    phases/<p>[/s<seed>]/config.json    -> the portable config hash
    <save dir>/env.json                 -> environment and data fingerprints (written by rank 0)
    <save dir>/metrics.jsonl[.d/]       -> one row per step (olmo_trainer.metrics_log: one file or segments)
    <save dir>/checkpoints/stepN/MANIFEST.json (else archive/<job>/stepN/) -> content identity

Missing files are simply absent from the record (a run still in progress, or from an older release).
Storage options: credentials from the environment; the endpoint from `--endpoint-url`, else the spec's
`storage.endpointUrl` for the spec's own storage (archive.run_storage_options), else the environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from olmo_operator import api, layout
from olmo_operator.archive import run_storage_options, storage_options
from olmo_operator.layout import RUN_NAME
from olmo_operator.local_state import STATE_FILE
from olmo_operator.plan import run_spec_hash
from olmo_operator.rundiff import JobRecord, RunRecord
from olmo_trainer import manifest, metrics_log, storage
from olmo_trainer.config import TrainConfig, hash_json
from olmo_trainer.layout import ENV_NAME

RUN_PLACEHOLDER = "<run>"
SEARCH_DEPTH = 3
"""How deep under a folder that is not a run `olmorun diff/report` looks for run.json to suggest."""


class RunNotFoundError(Exception):
    """The argument names no run: no run.json there (nor under a workdir's storage/)."""


@dataclass(frozen=True)
class RunLocation:
    """Where one run's files are read: `root`, with the run as its run.json records it.

    A run whose `root` is not its recorded run root (a copy, a download, a move) is read under `root`
    only: `at` maps every layout path onto it.
    """

    run: api.OlmoRun
    root: str
    endpoint_url: str | None = None
    """--endpoint-url: overrides the spec's and the environment's for every file."""
    from_spec: bool = False
    """The root was taken from the spec (a workdir or a spec file): the spec's endpoint applies to it."""
    status: dict[str, Any] | None = None

    @property
    def moved(self) -> bool:
        return _canonical(self.root) != _canonical(layout.run_root(self.run))

    def at(self, uri: str) -> str:
        """The place of a layout path (run root or save dir) of the run in this location."""
        if not self.moved:
            return uri
        for base in (layout.run_root(self.run), layout.scratch_root(self.run)):
            if uri == base or uri.startswith(base + "/"):
                return self.root + uri[len(base) :]
        return uri

    def options(self, uri: str) -> dict[str, Any]:
        if self.endpoint_url:
            return storage_options(uri, endpoint_url=self.endpoint_url)
        if self.from_spec or not _canonical(uri).startswith(_canonical(self.root)):
            return run_storage_options(self.run, uri)  # the spec's own storage (a scratch save dir too)
        return storage_options(uri)  # a root given by hand: the environment's endpoint, as it was read


def _canonical(uri: str) -> str:
    uri = uri.rstrip("/")
    return storage.path_to_uri(uri) if "://" not in uri else uri


def _fs(uri: str, options: dict[str, Any]) -> tuple[AbstractFileSystem, str]:
    fs, path = storage.filesystem(uri, **options)
    fs.invalidate_cache()
    return fs, path


def _read_json(uri: str, options: dict[str, Any]) -> Any:
    fs, path = _fs(uri, options)
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _parse(document: Any, where: str) -> api.OlmoRun:
    if not isinstance(document, dict):
        raise RunNotFoundError(f"{where}: not an OlmoRun document")
    try:
        return api.parse_olmorun(
            {k: document[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in document}
        )
    except api.SpecError as error:
        raise RunNotFoundError(f"{where}: its spec is not valid: {error.problems[0]}") from None


def _runs_below(folder: Path) -> list[Path]:
    found: list[Path] = []
    for depth in range(1, SEARCH_DEPTH + 1):
        found += sorted(p.parent for p in folder.glob("/".join(["*"] * depth) + f"/{RUN_NAME}"))
    return found


def _not_a_run(target: str) -> RunNotFoundError:
    hint = "give a run root (the folder holding run.json), an `olmorun local` workdir or the run's spec file"
    below = _runs_below(Path(target)) if "://" not in target and Path(target).is_dir() else []
    if below:
        hint = "runs below it: " + ", ".join(str(p) for p in below[:5])
    return RunNotFoundError(f"{target}: not a run (no {RUN_NAME} here); {hint}")


def locate(
    target: str, endpoint_url: str | None = None, load_spec: Callable[[str], Any] | None = None
) -> RunLocation:
    """Where the run named by `target` is read (see the module docstring). A spec file is read with
    `load_spec` (the CLI's: cli_spec.load_documents). Raises RunNotFoundError."""
    local = Path(target) if "://" not in target else None
    if local is not None and (local / STATE_FILE).is_file():
        return _locate_workdir(local, endpoint_url)
    if local is not None and local.is_file() and local.name != RUN_NAME:
        if load_spec is None:
            raise RunNotFoundError(f"{target}: a file, not a run; give the folder holding {RUN_NAME}")
        run = _parse(load_spec(target), target)
        return RunLocation(run, layout.run_root(run), endpoint_url, from_spec=True)
    root = str(local.parent) if local is not None and local.name == RUN_NAME else target.rstrip("/")
    document = _read_json(f"{root}/{RUN_NAME}", storage_options(root, endpoint_url=endpoint_url))
    if document is None:
        raise _not_a_run(target)
    return RunLocation(_parse(document, f"{root}/{RUN_NAME}"), root, endpoint_url)


def _locate_workdir(workdir: Path, endpoint_url: str | None) -> RunLocation:
    state = json.loads((workdir / STATE_FILE).read_text())
    found = sorted((workdir / "storage").glob(f"*/*/{RUN_NAME}"))
    if len(found) > 1:
        raise RunNotFoundError(
            f"{workdir}: a workdir, but {len(found)} run.json files under {workdir}/storage"
        )
    status = state.get("status")
    if found:
        root = str(found[0].parent.resolve())
        document = _read_json(str(found[0]), {})
        return RunLocation(_parse(document, str(found[0])), root, endpoint_url, status=status)
    run = _parse(state.get("document"), f"{workdir}/{STATE_FILE}")  # `--storage spec`: the spec's storage
    return RunLocation(run, layout.run_root(run), endpoint_url, from_spec=True, status=status)


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


def _metrics(where: RunLocation, save_dir: str) -> list[dict[str, Any]]:
    fs, path = _fs(save_dir, where.options(save_dir))
    return metrics_log.read_records(fs, path.rstrip("/"))


def _checkpoints(
    where: RunLocation, directories: list[str]
) -> tuple[dict[int, dict[str, Any] | None], str | None]:
    """(committed step -> MANIFEST content, createdAt of the newest), from the first directory holding any."""
    for directory in directories:
        fs, path = _fs(directory, where.options(directory))
        found, created = {}, None
        for step, step_path in manifest.committed_steps(fs, path):
            record = manifest.read_manifest(fs, step_path) or {}
            found[step], created = record.get("content"), record.get("createdAt")
        if found:
            return found, created
    return {}, None


def read_job(where: RunLocation, phase: api.PhaseSpec, seed: int, roots: re.Pattern[str]) -> JobRecord:
    run = where.run
    save = where.at(layout.save_dir(run, phase, seed))
    config_uri = where.at(layout.config_uri(run, phase, seed))
    config = _read_json(config_uri, where.options(config_uri))
    archive = where.at(layout.archive_dir(run, phase, seed))
    checkpoints, finished = _checkpoints(where, [layout.checkpoints_dir(save), archive])
    env_uri = f"{save}/{ENV_NAME}"
    return JobRecord(
        phase=phase.name,
        seed=seed,
        kind=phase.kind,
        config_hash=portable_config_hash(config, roots) if isinstance(config, dict) else None,
        env=portable(_read_json(env_uri, where.options(env_uri)), roots),
        metrics=portable(_metrics(where, save), roots),
        checkpoints=checkpoints,
        finished_at=finished,
    )


def read_run(
    target: str, *, endpoint_url: str | None = None, load_spec: Callable[[str], Any] | None = None
) -> RunRecord:
    """The whole record of the run at `target`, read there (see the module docstring).

    Raises RunNotFoundError when `target` is not a run, or its storage holds no run.json.
    """
    where = locate(target, endpoint_url, load_spec)
    record_uri = f"{where.root}/{RUN_NAME}"
    document = _read_json(record_uri, where.options(record_uri))
    if document is None:
        raise _not_a_run(where.root if where.from_spec else target)
    if where.from_spec:  # the files were laid out by the run as recorded, not by a later edit of its spec
        where = replace(where, run=_parse(document, record_uri))
    run = where.run
    roots = root_pattern(run)
    jobs = [
        read_job(where, phase, seed, roots)
        for phase in api.topological_order(run)
        for seed in layout.job_seeds(run, phase)
    ]
    return RunRecord(
        uri=where.root,
        name=run.name,
        spec_hash=run_spec_hash(run),
        spec=document.get("spec") or {},
        run_json=document,
        jobs=jobs,
        status=where.status,
    )
