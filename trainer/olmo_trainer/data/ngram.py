"""OLMo 2's repeated n-gram instance filter, vectorised over a batch of instances.

An instance is dropped when some n-gram of length 1..max_period repeats max_repetitions times or more
in a row ("the the the ...", or a 13-token phrase copied 32 times): the OLMo 2 paper ties such data to
gradient-norm spikes.

How: tokens repeat with period p over a stretch exactly when x[i] == x[i - p] along it. An n-gram of
length p repeated R times in a row is a stretch of R*p tokens in which that holds for the last (R-1)*p
positions: a run of (R-1)*p consecutive matches. For each p we compare the batch with itself shifted
by p and look for such a run by repeated ANDs of shifted copies: no Python loop over tokens. A
necessary condition on every p-th token screens rows first, so clean text costs about
sum(1/p) ~ 3.2 comparisons per token instead of 13 full passes.

    drop = repeated_ngram_mask(batch)           # batch (N, T) -> bool (N,)
"""

from __future__ import annotations

import numpy as np


def _has_run(matches: np.ndarray, length: int) -> np.ndarray:
    """Per row of a bool (N, M) array: is there a run of >= `length` consecutive True values?

    By doubling: after k steps `run[:, i]` says matches[i : i + 2**k] are all True; one more AND with
    a shifted copy reaches any length. About log2(length) byte-wise ANDs, no integer arithmetic.
    """
    run, have = matches, 1
    while have * 2 <= length:
        run = run[:, have:] & run[:, :-have]
        have *= 2
    if have < length:
        rest = length - have  # <= have, so the two windows overlap or touch: one contiguous run
        run = run[:, rest:] & run[:, :-rest]
    return np.asarray(run.any(axis=1)) if run.shape[1] else np.zeros(matches.shape[0], dtype=bool)


def repeated_ngram_mask(tokens: np.ndarray, *, max_period: int = 13, max_repetitions: int = 32) -> np.ndarray:
    """Bool (N,): True where a row of `tokens` (N, T) holds an n-gram (n <= max_period) repeated
    `max_repetitions` or more times in a row. A 1-D array is treated as one row."""
    batch = np.atleast_2d(tokens)
    drop = np.zeros(batch.shape[0], dtype=bool)
    for period in range(1, max_period + 1):
        needed = (max_repetitions - 1) * period
        if needed >= batch.shape[1]:
            break  # longer periods cannot repeat enough times inside the window
        # Cheap necessary condition first, at 1/period of the work: a run of `needed` matches spans
        # max_repetitions - 1 consecutive multiples of `period`, so the tokens at those multiples are
        # max_repetitions equal values in a row. Natural text almost never passes it.
        strided = batch[:, ::period]
        same = strided[:, 1:] == strided[:, :-1]  # (N, T / p)
        rows = np.flatnonzero(_has_run(same, max_repetitions - 1) & ~drop)
        if rows.size:  # the exact test on the few candidate rows
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
