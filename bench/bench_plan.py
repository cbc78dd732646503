"""Cost of one reconcile step as a run grows: the pure planner, and observe on real local storage.

    .venv/bin/python bench/bench_plan.py [--phases 32] [--seeds 16] [--record]

A synthetic recipe of `--phases` phases in a chain, every other one fanned out into `--seeds` seeds
(up to 32 x 16 = the API's limits), driven to the point where every job of the last phase runs, so the
status is as large as it gets. Reported: plan() median/p95 over repeats (pure: status copy, spec hash
per started phase, resolve of each submitted job), and observe() with a committed checkpoint and a
metrics file per running job under a temporary directory (describe answered from memory).
`--record` appends the figures to bench/RESULTS.md with the command and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from olmo_operator import layout
from olmo_operator.actions import ArchiveCheckpoint, ArchiveResult, JobObservation, Observation
from olmo_operator.api import OlmoRun, parse_olmorun
from olmo_operator.observe import observe
from olmo_operator.plan import plan
from olmo_operator.request import JobRequest
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DATA = {"sequenceLength": 64, "sources": [{"name": "g", "synthetic": {"numTokens": "1M"}}]}


def recipe(phases: int, seeds: int, storage: str) -> OlmoRun:
    specs: list[dict[str, Any]] = []
    for i in range(phases):
        phase: dict[str, Any] = {
            "name": f"p{i}",
            "kind": "pretrain" if i == 0 else "anneal",
            "maxSteps": 10,
            "data": DATA,
            "batch": {"globalBatchSize": 8},
        }
        if i:
            phase["from"] = f"p{i - 1}"
        if i % 2 == 1:
            phase["seeds"] = list(range(1, seeds + 1))
        specs.append(phase)
    return parse_olmorun(
        {
            "apiVersion": "olmorun.dev/v1alpha1",
            "kind": "OlmoRun",
            "metadata": {"name": "bench", "uid": "u"},
            "spec": {
                "image": "img",
                "model": {"preset": "tiny"},
                "storage": {"uri": storage},
                "cluster": {"gpusPerNode": 0, "procsPerNode": 1},
                "phases": specs,
            },
        }
    )


def drive_to_last_phase(run: OlmoRun) -> OlmoRun:
    """Succeed and archive every phase but the last, whose jobs are left running."""
    for phase in run.spec.phases[:-1]:
        result = plan(run, Observation(), NOW)
        run = run.model_copy(update={"status": result.status})
        jobs = {
            j.name: JobObservation(
                j.name,
                "Succeeded",
                checkpoint=(
                    10,
                    layout.step_uri(layout.checkpoints_dir(layout.save_dir(run, phase, j.seed)), 10),
                ),
            )
            for j in run.status.phases[phase.name].jobs
        }
        result = plan(run, Observation(jobs=jobs), NOW)
        run = run.model_copy(update={"status": result.status})
        archives = {
            a.key: ArchiveResult(a.key, a.src, a.dst, ok=True)
            for a in result.actions
            if isinstance(a, ArchiveCheckpoint)
        }
        result = plan(run, Observation(jobs=jobs, archives=archives), NOW)
        run = run.model_copy(update={"status": result.status})
    return run


class Running:
    def describe(self, job_name: str) -> JobObservation:
        return JobObservation(job_name, "Running")

    def submit(self, request: JobRequest) -> str:
        return request.name

    def cancel(self, job_name: str) -> None:
        return None


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = drive_to_last_phase(recipe(args.phases, args.seeds, Path(tmp).as_uri()))
        run = run.model_copy(update={"status": plan(run, Observation(), NOW).status})
        last = run.spec.phases[-1]
        running = run.status.phases[last.name].jobs
        for job in running:  # what the trainer leaves behind: a committed checkpoint and metrics
            save = layout.save_dir(run, last, job.seed)
            fs, root = filesystem(save)
            step5 = layout.step_uri(layout.checkpoints_dir(root), 5)
            fs.makedirs(step5, exist_ok=True)
            fs.pipe_file(f"{step5}/shard", b"x" * 1024)
            manifest.commit(fs, step5, manifest.build_manifest(fs, step5, step=5))
            fs.pipe_file(
                layout.metrics_uri(root),
                (json.dumps({"step": 5, "tokens": 320, "loss": 3.0}) + "\n").encode(),
            )
        observation = observe(run, launcher=Running())
        jobs = sum(len(p.jobs) for p in run.status.phases.values())
        plan_ms = timed(lambda: plan(run, observation, NOW), args.repeats)
        observe_ms = timed(lambda: observe(run, launcher=Running()), max(3, args.repeats // 5))
    size = len(run.status.model_dump_json(by_alias=True, exclude_none=True))
    lines = [
        f"phases {args.phases}, seeds {args.seeds}: {jobs} jobs in status ({size / 1024:.0f} KiB JSON), "
        f"{len(running)} running",
        f"plan():    median {statistics.median(plan_ms):.1f} ms, p95 "
        f"{sorted(plan_ms)[int(0.95 * len(plan_ms)) - 1]:.1f} ms",
        f"observe(): median {statistics.median(observe_ms):.1f} ms for {len(running)} running jobs on local "
        "files",
    ]
    print("\n".join(lines))
    if args.record:
        command = " ".join([".venv/bin/python", "bench/bench_plan.py", *sys.argv[1:]])
        with (Path(__file__).parent / "RESULTS.md").open("a") as out:
            out.write(f"\n## bench_plan ({dt.date.today().isoformat()})\n\n`{command}`\n\n")
            out.write("".join(f"- {line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
