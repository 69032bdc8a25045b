"""Paired bootstrap confidence intervals for the difference (or ratio) between two models.

Both models were measured on the same units (items, windows, repeated runs), so unit i of the
baseline and unit i of the candidate are resampled together: the interval reflects how the result
would move with another draw of units, and what the units share (an item's difficulty, a window's
text, a time slot's machine load) cancels. Percentile intervals (Efron), as
`scipy.stats.bootstrap(..., paired=True, method="percentile")` computes them; the tests check
against scipy and against exact enumeration of every resample on a small example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(baseline, candidate) samples of shape (resamples, n) -> one value per resample, shape (resamples,)."""


def mean_difference(baseline: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Candidate mean minus baseline mean (accuracy points, NLL nats)."""
    return candidate.mean(axis=-1) - baseline.mean(axis=-1)


def ratio_of_means(baseline: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Candidate mean over baseline mean (speed, memory)."""
    return candidate.mean(axis=-1) / baseline.mean(axis=-1)


@dataclass(frozen=True)
class Interval:
    estimate: float
    """The statistic on the measured units themselves."""
    low: float
    high: float
    confidence: float
    resamples: int


def paired_bootstrap(baseline: Sequence[float], candidate: Sequence[float], statistic: Statistic,
                     *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                     chunk: int = 500) -> Interval:
    """Percentile interval of `statistic` over `resamples` paired resamples of the units.

    Resampling draws n unit indices with replacement, the same indices for both models. Resamples are
    drawn `chunk` at a time so memory stays at chunk * n values whatever the number of resamples.
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired samples need equal, non-empty 1-d shapes (got {a.shape} and {b.shape})")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    n, values = a.size, []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))  # (chunk, n)
        values.append(statistic(a[idx], b[idx]))
    dist = np.concatenate(values)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(dist, [alpha, 1 - alpha])
    estimate = float(statistic(a[None, :], b[None, :])[0])
    return Interval(estimate, float(low), float(high), confidence, resamples)


def exact_bootstrap_distribution(baseline: Sequence[float], candidate: Sequence[float],
                                 statistic: Statistic) -> tuple[np.ndarray, np.ndarray]:
    """Every one of the n**n paired resamples, as (values, probabilities): the brute-force reference.

    Only for tiny n (n**n grows fast); resamples that draw the same multiset are merged.
    """
    from itertools import combinations_with_replacement
    from math import factorial

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    n = a.size
    values, probs = [], []
    for combo in combinations_with_replacement(range(n), n):
        counts = np.bincount(combo, minlength=n)
        # Multinomial: number of ordered draws giving this multiset, over all n**n ordered draws.
        ways = factorial(n) / np.prod([factorial(c) for c in counts])
        idx = np.asarray(combo)[None, :]
        values.append(float(statistic(a[idx], b[idx])[0]))
        probs.append(ways / n**n)
    return np.asarray(values), np.asarray(probs)
