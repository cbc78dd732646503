"""rundiff.compare pinned whole: for runs that differ in many ways at once, the exact list of
divergences (kind, phase, seed, step, name, both values, in run order), the notes, the largest
deviations and the compared counts, plus the text `olmorun diff` prints for each kind and the short
summary table. The expected values are written from the module docstring's rules, not read back.
"""

from __future__ import annotations

from typing import Any

import pytest

from olmo_operator.rundiff import (
    DiffResult,
    Divergence,
    JobRecord,
    RunRecord,
    _show,
    compare,
    flatten,
    result_metrics,
    summary_table,
)

SHA_A, SHA_B = "a" * 64, "b" * 64


def rows(*losses: float | None, **extra: Any) -> list[dict[str, Any]]:
    return [{"step": i + 1, "loss": loss, "tokens_per_s": 10.0 * i, **extra} for i, loss in enumerate(losses)]


def job(phase: str, seed: int, **kw: Any) -> JobRecord:
    defaults: dict[str, Any] = {"kind": "pretrain", "config_hash": "c", "env": {"data": {"orderSha256": "o"}}}
    defaults.update(kw)
    return JobRecord(phase, seed, **defaults)


def run(jobs: list[JobRecord], spec: dict[str, Any] | None = None, spec_hash: str = "h") -> RunRecord:
    return RunRecord("u", "r", spec_hash, spec or {}, {}, jobs)


def as_tuples(items: list[Divergence]) -> list[tuple[Any, ...]]:
    return [(d.what, d.phase, d.seed, d.step, d.name, d.a, d.b) for d in items]


def test_many_differences_at_once_in_run_order() -> None:
    a = run(
        [
            job(
                "pre",
                0,
                metrics=rows(2.0, 1.5, 1.25, **{"eval/arith/accuracy": 0.5}),
                checkpoints={
                    2: {"sha256": SHA_A, "tensors": {"w1": "1", "w2": "2", "w3": "3"}},
                    3: {"sha256": SHA_A},
                },
                env={
                    "data": {"fingerprint": "f", "orderSha256": "o", "sampleSha256": "s"},
                    "software": {"torch": "2.8"},
                },
            ),
            job("anneal", 42, config_hash="c42", metrics=rows(1.0)),
            job("anneal", 7, metrics=rows(1.0)),
        ],
        spec={"seed": 1, "model": {"preset": "tiny", "dropout": 0.0}},
        spec_hash="h1",
    )
    b = run(
        [
            job(
                "pre",
                0,
                metrics=[
                    {"step": 1, "loss": 2.0, "grad_norm": 3.0},
                    {"step": 2, "loss": 1.75, "eval/arith/accuracy": 0.5},
                    {"step": 4, "loss": 1.0},
                ],
                checkpoints={
                    2: {"sha256": SHA_B, "tensors": {"w1": "1", "w2": "x", "w3": "y"}},
                    3: {"sha256": SHA_A},
                },
                env={
                    "data": {"fingerprint": "g", "orderSha256": "o", "sampleSha256": "t"},
                    "software": {"torch": "2.9"},
                },
            ),
            job("anneal", 42, config_hash="d42", metrics=rows(1.0)),
            job("soup", 0, metrics=[]),
        ],
        spec={"seed": 2, "model": {"preset": "tiny", "dropout": 0.1}},
        spec_hash="h2",
    )
    result = compare(a, b)
    assert as_tuples(result.divergences) == [
        ("spec", None, None, None, "model.dropout", 0.0, 0.1),
        ("spec", None, None, None, "seed", 1, 2),
        ("data", "pre", 0, None, "fingerprint", "f", "g"),
        ("data", "pre", 0, None, "sampleSha256", "s", "t"),
        ("eval", "pre", 0, 1, "eval/arith/accuracy", 0.5, "absent"),
        ("metric", "pre", 0, 1, "grad_norm", "absent", 3.0),
        ("metric", "pre", 0, 2, "loss", 1.5, 1.75),
        ("checkpoint", "pre", 0, 2, "content (w2 and 1 more tensors)", SHA_A, SHA_B),
        ("missing", "pre", 0, 3, "metrics row", "present", "absent"),
        ("missing", "pre", 0, 4, "metrics row", "absent", "present"),
        ("config", "anneal", 42, None, "hash", "c42", "d42"),
        ("missing", "anneal", 7, None, "job", "present", "absent"),
        ("missing", "soup", 0, None, "job", "absent", "present"),
    ]
    assert as_tuples(result.notes) == [("environment", "pre", 0, None, "software.torch", "2.8", "2.9")]
    assert result.compared == {"jobs": 2, "steps": 3, "values": 4, "checkpoints": 2}
    assert result.deviations == {"eval/arith/accuracy": 0.0, "loss": 0.25}
    assert not result.identical
    assert result.first == result.divergences[0]
    assert summary_table(result) == [
        ("spec", "run", 2),
        ("data", "pre/s0", 2),
        ("eval", "pre/s0", 1),
        ("metric", "pre/s0", 2),
        ("checkpoint", "pre/s0", 1),
        ("missing", "pre/s0", 2),
        ("config", "anneal/s42", 1),
        ("missing", "anneal/s7", 1),
        ("missing", "soup/s0", 1),
        ("environment (note)", "pre/s0", 1),
    ]
    assert summary_table(result, limit=2) == [("spec", "run", 2), ("data", "pre/s0", 2)]


def test_an_eval_key_is_an_eval_divergence() -> None:
    a = run([job("sft", 0, metrics=[{"step": 5, "eval/arith/accuracy": 0.25, "loss": 1.0}])])
    b = run([job("sft", 0, metrics=[{"step": 5, "eval/arith/accuracy": 0.5, "loss": 1.0}])])
    result = compare(a, b)
    assert as_tuples(result.divergences) == [("eval", "sft", 0, 5, "eval/arith/accuracy", 0.25, 0.5)]
    assert result.deviations == {"eval/arith/accuracy": 0.25, "loss": 0.0}
    assert result.compared == {"jobs": 1, "steps": 1, "values": 2}


def test_a_spec_hash_change_without_a_visible_field_is_reported_as_the_hash() -> None:
    result = compare(run([], {"a": 1}, "h1"), run([], {"a": 1}, "h2"))
    assert as_tuples(result.divergences) == [("spec", None, None, None, "hash", None, None)]
    assert result.compared == {}


def test_a_spec_change_lists_at_most_twenty_fields() -> None:
    left = {f"k{i:02d}": i for i in range(25)}
    right = {f"k{i:02d}": -i for i in range(25)}
    result = compare(run([], left, "1"), run([], right, "2"))
    assert [d.name for d in result.divergences] == [f"k{i:02d}" for i in range(1, 21)]  # k00 is equal


def test_checkpoint_content_names_the_one_differing_tensor_or_none() -> None:
    one = compare(
        run([job("p", 0, checkpoints={1: {"sha256": SHA_A, "tensors": {"x": "1", "y": "2"}}})]),
        run([job("p", 0, checkpoints={1: {"sha256": SHA_B, "tensors": {"x": "1", "y": "3"}}})]),
    )
    assert as_tuples(one.divergences) == [("checkpoint", "p", 0, 1, "content (y)", SHA_A, SHA_B)]
    no_tensors = compare(run([job("p", 0, checkpoints={1: None})]), run([job("p", 0, checkpoints={1: None})]))
    assert as_tuples(no_tensors.divergences) == [("checkpoint", "p", 0, 1, "content", None, None)]
    same = compare(
        run([job("p", 0, checkpoints={1: {"sha256": SHA_A, "tensors": {"x": "1"}}})]),
        run([job("p", 0, checkpoints={1: {"sha256": SHA_A, "tensors": {"x": "2"}}})]),
    )
    assert same.identical  # the whole-content hash decides when it is present and equal
    assert same.compared == {"jobs": 1, "checkpoints": 1}


def test_with_a_tolerance_deviations_pass_and_weights_become_notes() -> None:
    a = run([job("p", 0, metrics=rows(1.0, 2.0), checkpoints={2: {"sha256": SHA_A}})])
    b = run([job("p", 0, metrics=rows(1.05, 2.0), checkpoints={2: {"sha256": SHA_B}})])
    loose = compare(a, b, atol=0.1)
    assert loose.identical
    assert as_tuples(loose.notes) == [("checkpoint", "p", 0, 2, "content", SHA_A, SHA_B)]
    assert loose.deviations["loss"] == pytest.approx(0.05)
    relative = compare(a, b, rtol=0.1)
    assert relative.identical and len(relative.notes) == 1
    tight = compare(a, b, atol=0.01)
    assert as_tuples(tight.divergences) == [("metric", "p", 0, 1, "loss", 1.0, 1.05)]
    assert as_tuples(tight.notes) == [("checkpoint", "p", 0, 2, "content", SHA_A, SHA_B)]


def test_final_checkpoints_must_match_but_intermediate_ones_may_be_retained_differently() -> None:
    a = run([job("p", 0, checkpoints={1: {"sha256": SHA_A}, 3: {"sha256": SHA_A}})])
    b = run([job("p", 0, checkpoints={2: {"sha256": SHA_A}, 3: {"sha256": SHA_A}})])
    assert compare(a, b).identical
    only_a = compare(
        run([job("p", 0, checkpoints={3: {"sha256": SHA_A}})]), run([job("p", 0, checkpoints={})])
    )
    assert as_tuples(only_a.divergences) == [
        ("missing", "p", 0, 3, "final checkpoint", "step 3", "step None")
    ]


def test_metrics_rows_without_an_integer_step_are_not_compared() -> None:
    a = run([job("p", 0, metrics=[{"step": "x", "loss": 1.0}, {"loss": 2.0}])])
    b = run([job("p", 0, metrics=[])])
    result = compare(a, b)
    assert result.identical
    assert result.compared == {"jobs": 1}


def test_divergence_text_for_every_kind_of_place() -> None:
    assert Divergence("spec", None, None, None, "seed", 1, 2).describe() == "run: spec seed: A=1 B=2"
    assert (
        Divergence("config", "p", 3, None, "hash", "c", "d").describe()
        == "phase p seed 3: config hash: A=c B=d"
    )
    assert (
        Divergence("metric", "p", 0, 7, "loss", 0.1, 0.30000000000000004).describe()
        == "phase p seed 0 step 7: metric loss: A=0.1 B=0.30000000000000004"
    )
    assert (
        Divergence("checkpoint", "p", 0, 0, "content", SHA_A, None).describe()
        == f"phase p seed 0 step 0: checkpoint content: A={'a' * 16} B=None"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (1e-20, "1e-20"),
        (2, "2"),
        ("a" * 64, "a" * 16),
        ("a" * 63, "a" * 63),
        ("a" * 65, "a" * 65),
        (None, "None"),
    ],
)
def test_show(value: Any, text: str) -> None:
    assert _show(value) == text


def test_result_metrics_keep_numbers_and_nulls_only() -> None:
    row = {
        "step": 3,
        "loss": None,
        "lr": 0.1,
        "n": 2,
        "name": "x",
        "mfu": 0.4,
        "time": 1.0,
        "ok": True,
        "list": [1],
    }
    assert result_metrics(row) == {"loss": None, "lr": 0.1, "n": 2, "ok": True}


def test_flatten_sorts_keys_and_keeps_lists_as_leaves() -> None:
    assert list(flatten({"b": {"y": 1, "x": [1, 2]}, "a": 0})) == [("a", 0), ("b.x", [1, 2]), ("b.y", 1)]
    assert list(flatten(5, "p")) == [("p", 5)]
    assert list(flatten({})) == []


def test_an_empty_result_is_identical() -> None:
    assert DiffResult().identical and DiffResult().first is None


@pytest.mark.parametrize(
    ("a", "b", "rtol", "atol", "close"),
    [
        (True, 1.05, 0.1, 0, False),  # a flag is compared as itself, never within a tolerance
        (1.05, True, 0.1, 0, False),
        (1.0, 1.5, 0, 1, True),  # atol alone
        (1.0, 1.5, 1, 0, True),  # rtol alone
        (1.0, 1.5, 0, 0.5, True),  # the bound itself is inside
        (1.0, 1.5, 0, 0.4999, False),
    ],
)
def test_numbers_close_at_the_bounds(a: Any, b: Any, rtol: float, atol: float, close: bool) -> None:
    from olmo_operator.rundiff import numbers_close

    assert numbers_close(a, b, rtol=rtol, atol=atol) is close


def test_env_keys_on_one_side_only_differ() -> None:
    from olmo_operator.rundiff import env_differences

    assert env_differences({"software": {"torch": "2"}}, {}) == [("software.torch", "2", None)]
    assert env_differences(None, {"cuda": "12"}) == [("cuda", None, "12")]


def test_a_tensor_on_one_side_only_is_a_differing_tensor() -> None:
    result = compare(
        run([job("p", 0, checkpoints={1: {"sha256": SHA_A, "tensors": {"x": "1"}}})]),
        run([job("p", 0, checkpoints={1: {"sha256": SHA_B, "tensors": {"x": "1", "y": "2"}}})]),
    )
    assert as_tuples(result.divergences) == [("checkpoint", "p", 0, 1, "content (y)", SHA_A, SHA_B)]


def test_a_null_metric_against_a_number_diverges_without_a_deviation() -> None:
    for left, right in ((None, 1.0), (1.0, None)):
        result = compare(
            run([job("p", 0, metrics=[{"step": 1, "loss": left}])]),
            run([job("p", 0, metrics=[{"step": 1, "loss": right}])]),
        )
        assert as_tuples(result.divergences) == [("metric", "p", 0, 1, "loss", left, right)]
        assert result.deviations == {}


def test_the_summary_table_stops_at_twelve_rows_by_default() -> None:
    a = run([job(f"p{i:02d}", 0) for i in range(13)])
    result = compare(a, run([]))
    assert len(result.divergences) == 13
    assert [where for _, where, _ in summary_table(result)] == [f"p{i:02d}/s0" for i in range(12)]
