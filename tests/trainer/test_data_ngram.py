"""The repeated n-gram filter: crafted cases, the exact threshold, and agreement with a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from olmo_trainer.data.ngram import repeated_ngram_mask, repeated_ngram_reference
from olmo_trainer.data.synth import synthesize


def with_repeat(
    gram: list[int], times: int, *, length: int = 1024, at: int = 100, seed: int = 0
) -> np.ndarray:
    # Random background from ids the gram does not use, so the only repetition is the planted one.
    rng = np.random.default_rng(seed)
    row = rng.integers(1000, 50_000, length)
    block = np.tile(gram, times)
    row[at : at + block.size] = block
    return row


@pytest.mark.parametrize("period", [1, 2, 5, 13])
def test_an_ngram_repeated_32_times_is_dropped_31_times_is_kept(period: int) -> None:
    gram = list(range(7, 7 + period))
    batch = np.stack([with_repeat(gram, 32), with_repeat(gram, 31), with_repeat(gram, 40, at=0)])
    assert repeated_ngram_mask(batch).tolist() == [True, False, True]


def test_a_14_gram_is_beyond_the_checked_lengths() -> None:
    row = with_repeat(list(range(14)), 40)
    assert not repeated_ngram_mask(row)[0]
    assert repeated_ngram_mask(row, max_period=14)[0]


def test_normal_text_is_kept() -> None:
    general = synthesize("general", 64 * 512, seed=0).reshape(64, 512)
    math = synthesize("math", 64 * 512, seed=0).reshape(64, 512)
    assert not repeated_ngram_mask(np.concatenate([general, math])).any()


def test_a_repeat_at_the_very_end_of_the_window_is_found() -> None:
    row = with_repeat([3, 4, 5], 32, length=400, at=400 - 96)
    assert repeated_ngram_mask(row)[0]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.integers(0, 2), min_size=40, max_size=40),  # 3 symbols: repeats happen by chance
        min_size=1,
        max_size=4,
    ),
    max_period=st.integers(1, 4),
    max_repetitions=st.integers(2, 6),
)
def test_vectorised_filter_matches_the_reference_loop(
    rows: list[list[int]], max_period: int, max_repetitions: int
) -> None:
    batch = np.asarray(rows, dtype=np.uint16)
    got = repeated_ngram_mask(batch, max_period=max_period, max_repetitions=max_repetitions)
    expected = [
        repeated_ngram_reference(r, max_period=max_period, max_repetitions=max_repetitions) for r in batch
    ]
    assert got.tolist() == expected
