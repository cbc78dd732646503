"""OLMo 2's repeated n-gram instance filter, vectorised over a batch of instances.

An instance is dropped when some n-gram of length 1..max_period repeats max_repetitions times or more
in a row ("the the the ...", or a 13-token phrase copied 32 times): the OLMo 2 paper ties such data to
gradient-norm spikes.

How: tokens repeat with period p over a stretch exactly when x[i] == x[i - p] along it. An n-gram of
length p repeated R times in a row is a stretch of R*p tokens in which that holds for the last (R-1)*p
positions: a run of (R-1)*p consecutive matches. For each p we compare the batch with itself shifted
by p and look for such a run with a sliding-window sum over a cumulative sum: O(T) numpy work per
period, no Python loop over tokens.

    drop = repeated_ngram_mask(batch)           # batch (N, T) -> bool (N,)
"""

from __future__ import annotations

import numpy as np


def _has_run(matches: np.ndarray, length: int) -> np.ndarray:
    """Per row of a bool (N, M) array: is there a run of >= `length` consecutive True values?"""
    if length > matches.shape[1]:
        return np.zeros(matches.shape[0], dtype=bool)
    counts = np.zeros((matches.shape[0], matches.shape[1] + 1), dtype=np.int32)
    np.cumsum(matches, axis=1, dtype=np.int32, out=counts[:, 1:])
    window = counts[:, length:] - counts[:, :-length]  # matches inside each window of `length`
    return (window == length).any(axis=1)


def repeated_ngram_mask(tokens: np.ndarray, *, max_period: int = 13, max_repetitions: int = 32) -> np.ndarray:
    """Bool (N,): True where a row of `tokens` (N, T) holds an n-gram (n <= max_period) repeated
    `max_repetitions` or more times in a row. A 1-D array is treated as one row."""
    batch = np.atleast_2d(tokens)
    drop = np.zeros(batch.shape[0], dtype=bool)
    for period in range(1, max_period + 1):
        needed = (max_repetitions - 1) * period
        if needed >= batch.shape[1]:
            break  # longer periods cannot repeat enough times inside the window
        rows = np.flatnonzero(~drop)  # rows already dropped need no more work
        if rows.size == 0:
            break
        sub = batch[rows]
        matches = sub[:, period:] == sub[:, :-period]  # (n, T - p)
        drop[rows[_has_run(matches, needed)]] = True
    return drop


def repeated_ngram_reference(tokens: np.ndarray, *, max_period: int = 13, max_repetitions: int = 32) -> bool:
    """The same predicate as a plain loop over n-gram starts (slow; the tests' oracle)."""
    seq = [int(t) for t in tokens]
    for period in range(1, max_period + 1):
        for start in range(len(seq) - period + 1):
            gram = seq[start : start + period]
            reps = 1
            while seq[start + reps * period : start + (reps + 1) * period] == gram:
                reps += 1
            if reps >= max_repetitions:
                return True
    return False
