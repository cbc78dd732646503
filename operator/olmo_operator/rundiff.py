"""PURE comparison of two runs' records (`olmorun diff`): no I/O, no torch.

A run's record (`RunRecord`, read from storage by runfiles.py) is its spec, and per job (phase x seed)
the portable config hash, env.json, metrics.jsonl rows and the content identity of every committed
checkpoint. `compare(a, b)` walks both in the order the run happened — the spec, then phase by phase
(topological order) and seed by seed: config, data order, then step by step the metrics of that step
and the checkpoint committed at it — and returns every divergence in that order, the first one being
where the runs part.

Exact by default: equal means the same float, bit for bit (a one-ulp change is a divergence). With a
tolerance (`rtol`/`atol`, as numpy.isclose: |a - b| <= atol + rtol * |b|) metrics within it pass, the
largest deviation per metric is reported, and checkpoint content hashes that differ are notes rather
than divergences: GPU kernels are not bit-deterministic, so GPU weights are compared through the
metrics they produce. Environments (versions, devices, ...) are never divergences: `notes` lists
where they differ. Timing metrics (throughput, MFU) are not compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

TIMING_METRICS = frozenset({"tokens_per_s", "mfu", "step_seconds", "seconds", "time"})
"""metrics.jsonl keys that measure speed, not results: they differ between any two runs."""
EVAL_PREFIX = "eval/"
"""Evaluation results are logged as flat keys `eval/<task>/<metric>` in metrics.jsonl."""
ENV_IGNORED = frozenset({"writtenAt", "hostname", "attempt", "initFrom", "soupFrom", "configHash"})
"""env.json keys that name a moment, a machine or a path: they say nothing about the environment."""


@dataclass
class JobRecord:
    """What one job (a phase, or one seed of a fanned-out phase) left in storage."""

    phase: str
    seed: int
    kind: str
    config_hash: str | None = None
    """Hash of config.json with saveDir dropped and the run's own storage root replaced (portable)."""
    env: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    """Committed step -> the MANIFEST's `content` (None for a checkpoint written before it existed)."""
    finished_at: str | None = None
    """When the final checkpoint was committed (its MANIFEST's createdAt); the start is env.json's
    writtenAt."""

    @property
    def label(self) -> str:
        return f"{self.phase}/s{self.seed}"


@dataclass
class RunRecord:
    """Everything `olmorun diff` and `olmorun report` read of one run."""

    uri: str
    name: str
    spec_hash: str
    """Hash of the spec without `storage` (where a run is written is not what it trains)."""
    spec: dict[str, Any]
    run_json: dict[str, Any]
    jobs: list[JobRecord]
    """In run order: phases topologically, seeds as listed."""
    status: dict[str, Any] | None = None
    """The local run's status (state.json), when the run is a local workdir."""

    def job(self, phase: str, seed: int) -> JobRecord | None:
        return next((j for j in self.jobs if j.phase == phase and j.seed == seed), None)


@dataclass(frozen=True)
class Divergence:
    """One place where two runs differ. `what`: spec, config, data, metric, eval, checkpoint, missing."""

    what: str
    phase: str | None
    seed: int | None
    step: int | None
    name: str
    a: Any
    b: Any

    def describe(self) -> str:
        where = "run" if self.phase is None else f"phase {self.phase} seed {self.seed}"
        at = "" if self.step is None else f" step {self.step}"
        return f"{where}{at}: {self.what} {self.name}: A={_show(self.a)} B={_show(self.b)}"


@dataclass
class DiffResult:
    divergences: list[Divergence] = field(default_factory=list)
    notes: list[Divergence] = field(default_factory=list)
    """Differences that do not make the runs different: environments, bit-level weights under a tolerance."""
    deviations: dict[str, float] = field(default_factory=dict)
    """Largest |a - b| per metric name over every job and step (reported when a tolerance is set)."""
    compared: dict[str, int] = field(default_factory=dict)
    """How many items of each kind were compared (jobs, steps, metrics, checkpoints)."""

    @property
    def identical(self) -> bool:
        return not self.divergences

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest repr that round-trips: a one-ulp difference stays visible
    if isinstance(value, str) and len(value) == 64:
        return value[:16]  # a sha256
    return str(value)


def numbers_close(a: Any, b: Any, *, rtol: float, atol: float) -> bool:
    """Equality of metric values: bit-exact without tolerance (NaN/inf are recorded as None)."""
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if rtol == 0 and atol == 0:
        return float(a) == float(b)
    return abs(float(a) - float(b)) <= atol + rtol * abs(float(b))


def result_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a metrics row that are results: numbers (or null), not timing, not `step`."""
    return {
        k: v
        for k, v in row.items()
        if k != "step" and k not in TIMING_METRICS and (v is None or isinstance(v, int | float))
    }


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) pairs of nested dicts; lists are leaves."""
    if isinstance(obj, Mapping):
        for key in sorted(obj):
            yield from flatten(obj[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, obj


def env_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(path, a, b) for every env.json leaf that differs, moments, hosts and paths left out."""
    left = {k: v for k, v in flatten({k: v for k, v in (a or {}).items() if k not in ENV_IGNORED})}
    right = {k: v for k, v in flatten({k: v for k, v in (b or {}).items() if k not in ENV_IGNORED})}
    return [
        (k, left.get(k), right.get(k))
        for k in sorted(left.keys() | right.keys())
        if left.get(k) != right.get(k)
    ]


class _Walk:
    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol, self.atol = rtol, atol
        self.result = DiffResult()

    @property
    def tolerant(self) -> bool:
        return self.rtol > 0 or self.atol > 0

    def count(self, kind: str, n: int = 1) -> None:
        self.result.compared[kind] = self.result.compared.get(kind, 0) + n

    def diverge(self, *args: Any) -> None:
        self.result.divergences.append(Divergence(*args))

    def note(self, *args: Any) -> None:
        self.result.notes.append(Divergence(*args))

    def job(self, a: JobRecord, b: JobRecord) -> None:
        self.count("jobs")
        where = (a.phase, a.seed)
        if a.config_hash != b.config_hash:
            self.diverge("config", *where, None, "hash", a.config_hash, b.config_hash)
        data_a, data_b = (a.env or {}).get("data") or {}, (b.env or {}).get("data") or {}
        for key in ("fingerprint", "orderSha256", "sampleSha256"):
            if data_a.get(key) != data_b.get(key):
                self.diverge("data", *where, None, key, data_a.get(key), data_b.get(key))
        for path, left, right in env_differences(
            {k: v for k, v in (a.env or {}).items() if k != "data"},
            {k: v for k, v in (b.env or {}).items() if k != "data"},
        ):
            self.note("environment", *where, None, path, left, right)
        self.steps(a, b)

    def steps(self, a: JobRecord, b: JobRecord) -> None:
        rows_a = {int(r["step"]): r for r in a.metrics if isinstance(r.get("step"), int)}
        rows_b = {int(r["step"]): r for r in b.metrics if isinstance(r.get("step"), int)}
        for step in sorted(rows_a.keys() | rows_b.keys() | a.checkpoints.keys() | b.checkpoints.keys()):
            if step in rows_a or step in rows_b:
                self.metrics_at(a, step, rows_a.get(step), rows_b.get(step))
            if step in a.checkpoints and step in b.checkpoints:
                self.checkpoint_at(a, step, a.checkpoints[step], b.checkpoints[step])
        # Retention keeps different intermediate steps only if the runs differ; the final one must match.
        final_a, final_b = max(a.checkpoints, default=None), max(b.checkpoints, default=None)
        if final_a != final_b:
            step = min(s for s in (final_a, final_b) if s is not None)
            self.diverge(
                "missing", a.phase, a.seed, step, "final checkpoint", f"step {final_a}", f"step {final_b}"
            )

    def metrics_at(
        self, job: JobRecord, step: int, row_a: Mapping[str, Any] | None, row_b: Mapping[str, Any] | None
    ) -> None:
        where = (job.phase, job.seed, step)
        if row_a is None or row_b is None:
            self.diverge(
                "missing",
                *where,
                "metrics row",
                "present" if row_a else "absent",
                "present" if row_b else "absent",
            )
            return
        self.count("steps")
        left, right = result_metrics(row_a), result_metrics(row_b)
        for name in sorted(left.keys() | right.keys()):
            what = "eval" if name.startswith(EVAL_PREFIX) else "metric"
            if name not in left or name not in right:
                self.diverge(what, *where, name, left.get(name, "absent"), right.get(name, "absent"))
                continue
            self.count("values")
            x, y = left[name], right[name]
            if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(x, bool):
                deviation = abs(float(x) - float(y))
                self.result.deviations[name] = max(self.result.deviations.get(name, 0.0), deviation)
            if not numbers_close(x, y, rtol=self.rtol, atol=self.atol):
                self.diverge(what, *where, name, x, y)

    def checkpoint_at(
        self, job: JobRecord, step: int, a: dict[str, Any] | None, b: dict[str, Any] | None
    ) -> None:
        self.count("checkpoints")
        where = (job.phase, job.seed, step)
        sha_a, sha_b = (a or {}).get("sha256"), (b or {}).get("sha256")
        if sha_a is not None and sha_a == sha_b:
            return
        tensors_a, tensors_b = (a or {}).get("tensors") or {}, (b or {}).get("tensors") or {}
        differing = sorted(
            k for k in tensors_a.keys() | tensors_b.keys() if tensors_a.get(k) != tensors_b.get(k)
        )
        name = (
            f"content ({differing[0]}"
            f"{f' and {len(differing) - 1} more tensors' if len(differing) > 1 else ''})"
            if differing
            else "content"
        )
        (self.note if self.tolerant else self.diverge)("checkpoint", *where, name, sha_a, sha_b)


def compare(a: RunRecord, b: RunRecord, *, rtol: float = 0.0, atol: float = 0.0) -> DiffResult:
    """Every divergence between two runs, in run order (see the module docstring)."""
    walk = _Walk(rtol, atol)
    if a.spec_hash != b.spec_hash:
        for path, left, right in env_differences(a.spec, b.spec)[:20] or [("", None, None)]:
            walk.diverge("spec", None, None, None, path or "hash", left, right)
    keys_b = {(j.phase, j.seed) for j in b.jobs}
    for job in a.jobs:
        other = b.job(job.phase, job.seed)
        if other is None:
            walk.diverge("missing", job.phase, job.seed, None, "job", "present", "absent")
        else:
            walk.job(job, other)
    for job in b.jobs:
        if (job.phase, job.seed) not in {(j.phase, j.seed) for j in a.jobs} and (
            job.phase,
            job.seed,
        ) in keys_b:
            walk.diverge("missing", job.phase, job.seed, None, "job", "absent", "present")
    return walk.result


def summary_table(result: DiffResult, limit: int = 12) -> list[tuple[str, str, int]]:
    """(kind, phase/seed, count) of what differs, for the short table under the first divergence."""
    counts: dict[tuple[str, str], int] = {}
    for item in [*result.divergences, *result.notes]:
        kind = item.what if item in result.divergences else f"{item.what} (note)"
        where = "run" if item.phase is None else f"{item.phase}/s{item.seed}"
        counts[(kind, where)] = counts.get((kind, where), 0) + 1
    return [(kind, where, n) for (kind, where), n in list(counts.items())[:limit]]
