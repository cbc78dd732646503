"""Prometheus metrics of the operator, served on OLMORUN_METRICS_PORT at /metrics.

    metrics = Metrics()                                   # its own registry: tests make as many as they like
    with metrics.time_reconcile("timer"): ...             # olmorun_reconcile_duration_seconds
    metrics.record_submissions(2, retries=1)              # jobs submitted by one reconcile
    metrics.record_events(events)                         # every event posted, by type and reason
    metrics.set_state("ns", "run", "Running")             # olmorun_runs{state=...}
    metrics.serve(9090)

Labels never carry run names: a cluster with thousands of runs must not mean thousands of series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def run_state(status: Any) -> str:
    """A bounded label: an OlmoRunStatus's stage (api.RUN_STAGES), Pending before the first step."""
    return str(getattr(status, "stage", None) or "Pending")


class Event(Protocol):
    """What the planner emits (actions.Emit); only type and reason are counted (read-only)."""

    @property
    def type(self) -> str: ...

    @property
    def reason(self) -> str: ...


class _RunsByState(Collector):
    """olmorun_runs{state}: computed at scrape time from the last state seen of every run."""

    def __init__(self, states: dict[tuple[str, str], str], lock: threading.Lock) -> None:
        self._states = states
        self._lock = lock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts: dict[str, int] = {}
            for state in self._states.values():
                counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily("olmorun_runs", "OlmoRuns by state (status.stage)", labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        yield family


class Metrics:
    """The operator's metrics on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], str] = {}
        self.registry.register(_RunsByState(self._states, self._lock))
        self.submissions = Counter(
            "olmorun_job_submissions", "Jobs submitted (retries included)", registry=self.registry
        )
        self.retries = Counter(
            "olmorun_job_retries",
            "Attempts after the first (failure, preemption, loss)",
            registry=self.registry,
        )
        self.events = Counter(
            "olmorun_events", "Kubernetes Events posted", ["type", "reason"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "olmorun_reconcile_duration_seconds",
            "Time of one reconcile (parse, observe, plan, apply)",
            ["trigger"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "olmorun_reconcile_errors",
            "Reconciles that raised, by kind of error",
            ["error"],
            registry=self.registry,
        )

    @contextmanager
    def time_reconcile(self, trigger: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.reconcile_seconds.labels(trigger=trigger).observe(time.perf_counter() - start)

    def record_events(self, events: Iterable[Event]) -> None:
        for event in events:
            self.events.labels(type=event.type, reason=event.reason).inc()

    def record_submissions(self, count: int, retries: int = 0) -> None:
        """`count` jobs submitted, of which `retries` were attempts after the first."""
        self.submissions.inc(count)
        self.retries.inc(retries)

    def record_error(self, kind: str) -> None:
        self.errors.labels(error=kind).inc()

    def set_state(self, namespace: str, name: str, state: str | None) -> None:
        with self._lock:
            self._states[(namespace, name)] = state or "Pending"

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._states.pop((namespace, name), None)

    def tracked(self) -> int:
        """How many runs the operator has seen and not yet forgotten."""
        with self._lock:
            return len(self._states)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when absent): for tests and the benchmark."""
        return float(self.registry.get_sample_value(name, labels) or 0.0)

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve /metrics from a daemon thread; returns the server (call .shutdown() to stop it)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
