"""200 concurrent OlmoRuns against the emulated Kubernetes API: latency, API requests, operator memory.

    .venv/bin/python bench/bench_operator.py [--runs 200] [--resync 2] [--record]

The operator runs as its own process (`python -m olmo_operator`, as in its Deployment) against the
kmock emulator of tests/operator/kube.py served from this process. The bench plays kubectl, Volcano and
the trainer, through four stages of every run's single pretrain phase:

  submit    apply the OlmoRuns                 -> each run's Volcano Job created
  running   Volcano marks every Job Running    -> each run's status says Running (polled: --resync)
  complete  checkpoints committed, Jobs Completed -> each run Succeeded (archive copied and verified)
  delete    delete the OlmoRuns                -> each run gone (jobs cancelled, finalizer removed)

Reported per stage: latency percentiles (server-side timestamps for `submit`, 50 ms polling of the
emulator's state otherwise), operator API requests per run by verb and resource (counted at the
emulator), operator RSS and CPU seconds. Also the operator's own reconcile durations, estimated from
its Prometheus histogram like `histogram_quantile`. `--record` appends the results to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kubernetes

from olmo_operator import api, layout
from olmo_operator.crd import build_crd
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem
from tests.dcp_files import dcp_metadata
from tests.operator.kube import OLMORUNS, VCJOBS, Call, KubeServer

NS = "bench"
AGENT = "olmorun-bench"


def olmorun(name: str, storage: Path) -> dict[str, Any]:
    data = {
        "sequenceLength": 32,
        "sources": [{"name": "g", "synthetic": {"kind": "general", "numTokens": "10K"}}],
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": "registry.example/olmorun-trainer@sha256:" + "0" * 64,
            "model": {"preset": "tiny"},
            "storage": {"uri": storage.as_uri()},
            "cluster": {"gpusPerNode": 0, "procsPerNode": 2},
            "phases": [
                {
                    "name": "pretrain",
                    "kind": "pretrain",
                    "maxSteps": 4,
                    "data": data,
                    "batch": {"globalBatchSize": 2, "microBatchSize": 1},
                }
            ],
        },
    }


def commit_checkpoint(body: dict[str, Any]) -> None:
    run = api.parse_olmorun(body)
    fs, root = filesystem(layout.checkpoints_dir(layout.save_dir(run, run.phase("pretrain"), run.spec.seed)))
    directory = layout.step_uri(root, 4)
    fs.makedirs(directory, exist_ok=True)
    fs.pipe_file(f"{directory}/__0_0.distcp", os.urandom(4096))
    fs.pipe_file(f"{directory}/.metadata", dcp_metadata(["__0_0.distcp"]))
    manifest.commit(fs, directory, manifest.build_manifest(fs, directory, step=4))


# --- measurement helpers ---------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS MiB, peak RSS MiB, CPU seconds) of a process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    rss = int(fields["VmRSS"].split()[0]) / 1024
    hwm = int(fields["VmHWM"].split()[0]) / 1024
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return rss, hwm, cpu


def histogram_quantiles(exposition: str, name: str) -> dict[str, float]:
    """p50/p95/p99 of a Prometheus histogram summed over its labels (linear within a bucket)."""
    buckets: dict[float, float] = collections.defaultdict(float)
    for line in exposition.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] += float(value)
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    out = {"count": total}
    for q in (0.5, 0.95, 0.99):
        rank, lower, below = q * total, 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                upper = bound if bound != float("inf") else lower
                share = (rank - below) / (buckets[bound] - below) if buckets[bound] > below else 1.0
                out[f"p{round(q * 100)}"] = lower + (upper - lower) * share
                break
            lower, below = bound, buckets[bound]
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


Snapshot = dict[str, dict[str, dict[str, Any]]]
"""{"runs": {name: object}, "jobs": {name: object}}: one consistent read of the emulator."""


def wait_all(
    names: list[str],
    done: Callable[[str, Snapshot], bool],
    started: dict[str, float],
    snapshot: Callable[[], Snapshot],
    timeout: float,
) -> dict[str, float]:
    """Poll every 50 ms; the latency of each name is when `done(name, snapshot)` was first seen true."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(names):
        if time.monotonic() > deadline:
            missing = [n for n in names if n not in seen]
            raise TimeoutError(f"{len(missing)} runs never got there, e.g. {missing[:3]}")
        now = time.monotonic()
        state = snapshot()
        for name in names:
            if name not in seen and name in started and done(name, state):
                seen[name] = now - started[name]
        time.sleep(0.05)
    return seen


# --- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, kube: KubeServer, pid: int, runs: int, storage: Path) -> None:
        self.kube, self.pid, self.storage = kube, pid, storage
        self.names = [f"bench-{i:03d}" for i in range(runs)]
        client = kube.api_client()
        client.user_agent = AGENT
        self.kubectl = kubernetes.client.CustomObjectsApi(client)
        self.pool = ThreadPoolExecutor(8)
        self.rows: list[dict[str, Any]] = []

    def stage(
        self,
        label: str,
        act: Callable[[str], None],
        done: Callable[[str, Snapshot], bool],
        timeout: float,
        latency_from_log: Callable[[list[Call], dict[str, float]], dict[str, float]] | None = None,
    ) -> None:
        first_call = len(self.kube.calls)
        rss0, _, cpu0 = proc_stats(self.pid)
        started: dict[str, float] = {}

        def timed(name: str) -> None:
            started[name] = time.monotonic()
            act(name)

        t0 = time.monotonic()
        acting = self.pool.map(timed, self.names)  # watched while the acts are still going out
        latencies = wait_all(self.names, done, started, self.snapshot, timeout)
        list(acting)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # let the last status patches and events land before counting
        calls = [c for c in self.kube.calls[first_call:] if c.agent != AGENT]
        if latency_from_log is not None:
            latencies = latency_from_log(self.kube.calls[first_call:], started)
        rss, hwm, cpu = proc_stats(self.pid)
        by_kind = collections.Counter(
            f"{c.action} {c.resource}{'/' + c.subresource if c.subresource else ''}" for c in calls
        )
        self.rows.append(
            {
                "stage": label,
                "wall": wall,
                **percentiles(list(latencies.values())),
                "requests": len(calls) / len(self.names),
                "by_kind": {k: v / len(self.names) for k, v in by_kind.most_common()},
                "rss": rss,
                "hwm": hwm,
                "cpu": cpu - cpu0,
                "rss_before": rss0,
            }
        )
        print(f"{label}: {self.rows[-1]}", flush=True)

    def snapshot(self) -> Snapshot:
        return {"runs": self.kube.objects(OLMORUNS, NS), "jobs": self.kube.objects(VCJOBS, NS)}

    @staticmethod
    def phase(name: str, state: Snapshot) -> str | None:
        obj = state["runs"].get(name) or {}
        return ((obj.get("status") or {}).get("phases", {}).get("pretrain") or {}).get("state")

    def run(self) -> None:
        bodies = {name: olmorun(name, self.storage) for name in self.names}
        jobs = {name: f"{name}-pretrain-a1" for name in self.names}
        volcano = ("batch.volcano.sh", "v1alpha1", NS, "jobs")

        def job_created_at(calls: list[Call], started: dict[str, float]) -> dict[str, float]:
            created = {c.name: c.at for c in calls if c.action == "CREATE" and c.resource == "jobs"}
            applied = {c.name: c.at for c in calls if c.action == "CREATE" and c.resource == "olmoruns"}
            return {n: created[jobs[n]] - applied[n] for n in self.names}

        self.stage(
            "submit",
            lambda n: self.kubectl.create_namespaced_custom_object(
                api.GROUP, api.VERSION, NS, api.PLURAL, bodies[n]
            ),
            lambda n, state: jobs[n] in state["jobs"],
            120,
            job_created_at,
        )
        self.stage(
            "running",
            lambda n: self.kubectl.patch_namespaced_custom_object_status(
                *volcano, jobs[n], {"status": {"state": {"phase": "Running"}}}
            ),
            lambda n, state: self.phase(n, state) == "Running",
            120,
        )

        def complete(name: str) -> None:
            commit_checkpoint(bodies[name])
            self.kubectl.patch_namespaced_custom_object_status(
                *volcano, jobs[name], {"status": {"state": {"phase": "Completed"}}}
            )

        self.stage("complete", complete, lambda n, state: self.phase(n, state) == "Succeeded", 180)
        self.stage(
            "delete",
            lambda n: self.kubectl.delete_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL, n),
            lambda n, state: n not in state["runs"],
            120,
        )


def report(
    args: argparse.Namespace, rows: list[dict[str, Any]], reconcile: dict[str, float], command: str
) -> str:
    lines = [
        f"\n## Operator: {args.runs} concurrent OlmoRuns against the kmock emulator "
        f"({dt.date.today().isoformat()})\n",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPU cores; operator and emulator are separate processes sharing them. "
        f"Resync (timer) {args.resync}s, {args.workers} worker threads. One pretrain phase per run.\n",
        "| stage | wall s | latency p50 s | p95 s | p99 s | max s | operator API requests / run | operator "
        "RSS MiB | operator CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['wall']:.1f} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | "
            f"{r['max']:.3f} | {r['requests']:.1f} | {r['rss']:.0f} | {r['cpu']:.1f} |"
        )
    lines.append("\nOperator requests per run, by stage (verb resource[/subresource]):\n")
    for r in rows:
        kinds = ", ".join(f"{k}: {v:.2f}" for k, v in r["by_kind"].items())
        lines.append(f"- {r['stage']}: {kinds}")
    lines.append(
        f"\nReconcile duration inside the operator (Prometheus histogram, {reconcile.get('count', 0):.0f} "
        "reconciles, "
        f"{reconcile.get('count', 0) / args.runs:.1f} per run): p50 "
        f"{reconcile.get('p50', float('nan')):.3f}s, "
        f"p95 {reconcile.get('p95', float('nan')):.3f}s, p99 {reconcile.get('p99', float('nan')):.3f}s. "
        f"Peak operator RSS {max(r['hwm'] for r in rows):.0f} MiB.\n"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--resync", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = parser.parse_args()
    command = "python bench/bench_operator.py " + " ".join(sys.argv[1:])
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, KubeServer([build_crd()], namespaces=(NS,)) as kube:
        env = {
            **os.environ,
            "OLMORUN_KUBE_SERVER": kube.url,
            "OLMORUN_RESYNC_SECONDS": str(args.resync),
            "OLMORUN_METRICS_PORT": str(metrics_port),
            "OLMORUN_HEALTH_PORT": "0",
            "OLMORUN_MAX_WORKERS": str(args.workers),
            "OLMORUN_LOG_LEVEL": "WARNING",
            "OLMORUN_NAMESPACES": NS,
        }
        operator = subprocess.Popen(
            [sys.executable, "-m", "olmo_operator"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    scrape(metrics_port)
                    break
                except OSError:
                    if time.monotonic() > deadline or operator.poll() is not None:
                        raise RuntimeError("the operator did not start") from None
                    time.sleep(0.2)
            # Ready means watching: kopf has listed and watches OlmoRuns (discovery and peering done).
            while not any(c.action == "WATCH" and c.resource == "olmoruns" for c in kube.calls):
                if time.monotonic() > deadline:
                    raise RuntimeError("the operator never watched OlmoRuns")
                time.sleep(0.1)
            bench = Bench(kube, operator.pid, args.runs, Path(tmp))
            bench.run()
            reconcile = histogram_quantiles(scrape(metrics_port), "olmorun_reconcile_duration_seconds")
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=60)
        refused = kube.emulator.rejections
        if refused:
            raise RuntimeError(f"the emulator refused writes: {refused[:3]}")
    text = report(args, bench.rows, reconcile, command)
    print(text)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
