"""Names and storage paths of one OlmoRun: pure string functions, no I/O.

The run-level half of the storage layout. The job-level half (what is inside a save_dir:
`checkpoints/step<N>/`, `metrics.jsonl`, step parsing) is olmo_trainer.layout, the one home shared
with the trainer; its functions are re-exported here so that operator code reads one module.

Every file of a run lives under `<storage>/<namespace>/<run>/` (DESIGN.md, "Object storage layout"):

    run.json                              run record: the spec, image and versions (written once)
    phases/<p>[/s<seed>]/config.json      the exact resolved config a job runs
    archive/<p>[-s<seed>]/stepN/          verified copy of a phase's final checkpoint

Jobs write checkpoints and metrics to their save_dir, `phases/<p>[/s<seed>]` under
`spec.storage.scratchUri` (a fast shared filesystem) or, by default, under `spec.storage.uri`.
A phase "fans out" when it lists `seeds`: then every path and job name carries the seed.
Jobs are named `<run>-<phase>[-s<seed>]-a<attempt>` (<= 63 characters, hashed when longer) so that
a repeated submission is detected by the scheduler (409 Conflict), never duplicated.
"""

from __future__ import annotations

import hashlib

from olmo_operator.api import OlmoRun, PhaseSpec
from olmo_trainer.layout import CONFIG_NAME, checkpoints_dir, join, metrics_uri, step_of, step_uri

__all__ = [
    "MAX_JOB_NAME",
    "MAX_NAME",
    "POD_SUFFIX",
    "archive_dir",
    "archive_uri",
    "checkpoints_dir",
    "config_uri",
    "fans_out",
    "job_key",
    "job_name",
    "job_seeds",
    "metrics_uri",
    "run_record_uri",
    "run_root",
    "save_dir",
    "scratch_root",
    "seed_key",
    "step_of",
    "step_uri",
]

MAX_NAME = 63
"""Kubernetes object names used as DNS labels (and label values) hold at most 63 characters."""
POD_SUFFIX = "-trainer-999-0"
"""Volcano names each pod `<job>-<task>-<index>` (torchx tasks are `trainer-<node>`) and uses it as the
pod's hostname, itself a 63-character DNS label: the job name leaves room for up to 1000 nodes."""
MAX_JOB_NAME = MAX_NAME - len(POD_SUFFIX)


def fans_out(phase: PhaseSpec) -> bool:
    """True when the phase runs one job per listed seed (and names carry `-s<seed>`)."""
    return bool(phase.seeds)


def job_seeds(run: OlmoRun, phase: PhaseSpec) -> list[int]:
    """The seed of every job of a phase: its `seeds`, or the run seed for a single job."""
    return list(phase.seeds) if phase.seeds else [run.spec.seed]


def seed_key(phase_name: str, seed: int) -> str:
    """`<phase>-s<seed>`: the key of one job of a phase that fans out over seeds."""
    return f"{phase_name}-s{seed}"


def job_key(phase: PhaseSpec, seed: int) -> str:
    """`<phase>` or `<phase>-s<seed>`: identifies one job of a phase across its attempts."""
    return seed_key(phase.name, seed) if fans_out(phase) else phase.name


def job_name(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int) -> str:
    """Deterministic job name `<run>-<phase>[-s<seed>]-a<attempt>`, at most MAX_JOB_NAME (49) characters.

    A longer name keeps its readable head and ends in a hash of the full name, so distinct jobs
    never collide and the attempt stays visible at the end.
    """
    full = f"{run.name}-{job_key(phase, seed)}-a{attempt}"
    if len(full) <= MAX_JOB_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    tail = f"-{digest}-a{attempt}"
    head = full[: MAX_JOB_NAME - len(tail)].rstrip("-")
    return f"{head}{tail}"


def run_root(run: OlmoRun) -> str:
    """`<storage>/<namespace>/<run>`: where the run's configs, manifests and archives live."""
    return join(run.spec.storage.uri, run.namespace, run.name)


def scratch_root(run: OlmoRun) -> str:
    """Root of the jobs' save dirs: `<scratchUri or uri>/<namespace>/<run>`."""
    base = run.spec.storage.scratch_uri or run.spec.storage.uri
    return join(base, run.namespace, run.name)


RUN_NAME = "run.json"
"""At a run's root: its reproducibility record (spec, spec hash, image, seeds), written once."""


def run_record_uri(run: OlmoRun) -> str:
    """`<run root>/run.json`."""
    return join(run_root(run), RUN_NAME)


def _phase_dir(phase: PhaseSpec, seed: int) -> str:
    return f"phases/{phase.name}/s{seed}" if fans_out(phase) else f"phases/{phase.name}"


def config_uri(run: OlmoRun, phase: PhaseSpec, seed: int) -> str:
    """`<run root>/phases/<p>[/s<seed>]/config.json`, written before the job is submitted."""
    return join(run_root(run), _phase_dir(phase, seed), CONFIG_NAME)


def save_dir(run: OlmoRun, phase: PhaseSpec, seed: int) -> str:
    """Where a job writes `checkpoints/stepN/` and `metrics.jsonl`; the same for every attempt,
    so a retry resumes from the newest committed checkpoint by itself."""
    return join(scratch_root(run), _phase_dir(phase, seed))


def archive_dir(run: OlmoRun, phase: PhaseSpec, seed: int) -> str:
    """`<run root>/archive/<p>[-s<seed>]`: where a job's final checkpoint is archived, as `step<N>/`."""
    return join(run_root(run), "archive", job_key(phase, seed))


def archive_uri(run: OlmoRun, phase: PhaseSpec, seed: int, step: int) -> str:
    """`<run root>/archive/<p>[-s<seed>]/step<N>`: the verified copy of a final checkpoint."""
    return step_uri(archive_dir(run, phase, seed), step)
