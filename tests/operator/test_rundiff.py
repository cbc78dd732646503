"""rundiff.py, the pure comparison behind `olmorun diff`: order of divergences, exactness, tolerance,
timing metrics, environments and checkpoint content (table-driven, no I/O)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from olmo_operator.rundiff import JobRecord, RunRecord, compare, env_differences, numbers_close


def job(phase: str = "pre", seed: int = 1, *, losses: tuple[float, ...] = (2.0, 1.5), **kw: Any) -> JobRecord:
    rows = [
        {"step": i + 1, "loss": loss, "lr": 0.1, "tokens_per_s": 100.0 + i} for i, loss in enumerate(losses)
    ]
    defaults: dict[str, Any] = {
        "kind": "pretrain",
        "config_hash": "c",
        "env": {"data": {"orderSha256": "o"}, "software": {"torch": "2"}},
        "metrics": rows,
        "checkpoints": {len(losses): {"sha256": "w", "tensors": {"model.a": "1", "model.b": "2"}}},
    }
    defaults.update(kw)
    return JobRecord(phase, seed, **defaults)


def run(*jobs: JobRecord, spec: dict[str, Any] | None = None) -> RunRecord:
    spec = spec or {"seed": 1}
    return RunRecord("u", "r", str(sorted(spec.items())), spec, {}, list(jobs))


def test_identical_runs() -> None:
    result = compare(run(job(), job("anneal")), run(job(), job("anneal")))
    assert result.identical and result.first is None
    assert result.compared == {"jobs": 2, "steps": 4, "values": 8, "checkpoints": 2}


@pytest.mark.parametrize(
    ("b", "first"),
    [
        (
            job(losses=(2.0, math.nextafter(1.5, 0))),
            "phase pre seed 1 step 2: metric loss: A=1.5 B=1.4999999999999998",
        ),
        (job(config_hash="d"), "phase pre seed 1: config hash: A=c B=d"),
        (job(env={"data": {"orderSha256": "x"}}), "phase pre seed 1: data orderSha256: A=o B=x"),
        (job(losses=(2.0,)), "phase pre seed 1 step 2: missing metrics row: A=present B=absent"),
        (job(checkpoints={1: None}), "phase pre seed 1 step 1: missing final checkpoint: A=step 2 B=step 1"),
        (
            job(checkpoints={2: {"sha256": "v", "tensors": {"model.a": "1", "model.b": "3"}}}),
            "phase pre seed 1 step 2: checkpoint content (model.b): A=w B=v",
        ),
    ],
)
def test_the_first_divergence_names_where_and_what(b: JobRecord, first: str) -> None:
    result = compare(run(job()), run(b))
    assert not result.identical
    assert result.first is not None and result.first.describe().startswith(first), result.first.describe()


def test_divergences_come_in_run_order_phase_then_step() -> None:
    a = run(job("pre", losses=(2.0, 1.5)), job("anneal", losses=(1.0, 0.9)))
    b = run(job("pre", losses=(2.0, 1.6)), job("anneal", losses=(1.1, 0.9)))
    places = [(d.phase, d.step, d.what) for d in compare(a, b).divergences]
    assert places[0] == ("pre", 2, "metric") and ("anneal", 1, "metric") in places


def test_timing_metrics_and_environments_are_not_divergences() -> None:
    b = job(env={"data": {"orderSha256": "o"}, "software": {"torch": "3"}, "hostname": "elsewhere"})
    b.metrics = [{**row, "tokens_per_s": 1.0, "mfu": 0.5} for row in b.metrics]
    result = compare(run(job()), run(b))
    assert result.identical
    assert [(n.what, n.name, n.a, n.b) for n in result.notes] == [("environment", "software.torch", "2", "3")]


def test_a_tolerance_passes_small_deviations_reports_the_largest_and_notes_weights() -> None:
    b = job(losses=(2.0 + 1e-6, 1.5 - 3e-6), checkpoints={2: {"sha256": "v", "tensors": {}}})
    assert not compare(run(job()), run(b)).identical
    result = compare(run(job()), run(b), rtol=1e-5)
    assert result.identical
    assert result.deviations["loss"] == pytest.approx(3e-6)
    assert [n.what for n in result.notes] == ["checkpoint"]
    assert not compare(run(job()), run(b), atol=1e-6).identical  # 3e-6 is outside


def test_missing_jobs_steps_and_spec_changes() -> None:
    result = compare(run(job(), job("anneal")), run(job(), spec={"seed": 2}))
    assert [(d.what, d.phase, d.name) for d in result.divergences] == [
        ("spec", None, "seed"),
        ("missing", "anneal", "job"),
    ]
    short = job(losses=(2.0,), checkpoints={})
    first = compare(run(job()), run(short)).first
    assert first is not None
    assert first.describe().startswith("phase pre seed 1 step 2: missing metrics row")


@pytest.mark.parametrize(
    ("a", "b", "rtol", "atol", "close"),
    [
        (1.0, 1.0, 0, 0, True),
        (1.0, math.nextafter(1.0, 2), 0, 0, False),
        (1, 1.0, 0, 0, True),
        (None, None, 0, 0, True),
        (None, 1.0, 1, 1, False),
        (100.0, 101.0, 0.01, 0, True),
        (0.0, 0.5, 0, 0.4, False),
    ],
)
def test_numbers_close(a: Any, b: Any, rtol: float, atol: float, close: bool) -> None:
    assert numbers_close(a, b, rtol=rtol, atol=atol) is close


def test_env_differences_leave_out_moments_hosts_and_paths() -> None:
    a = {
        "writtenAt": 1,
        "hostname": "x",
        "initFrom": "/a",
        "software": {"torch": "2", "packages": {"numpy": "1"}},
    }
    b = {
        "writtenAt": 2,
        "hostname": "y",
        "initFrom": "/b",
        "software": {"torch": "2", "packages": {"numpy": "2"}},
    }
    assert env_differences(a, b) == [("software.packages.numpy", "1", "2")]
