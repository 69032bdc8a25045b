"""Paired bootstrap intervals against exact enumeration of every resample and against scipy."""

from __future__ import annotations

import numpy as np
import pytest

from lmopt.monitor.bootstrap import (
    exact_bootstrap_distribution,
    mean_difference,
    paired_bootstrap,
    ratio_of_means,
)


def _weighted_quantile(values: np.ndarray, probs: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cdf = np.cumsum(probs[order])
    return float(values[order][np.searchsorted(cdf, q)])


@pytest.mark.parametrize("statistic", [mean_difference, ratio_of_means])
def test_interval_matches_exact_enumeration(statistic):
    # n = 6: 6**6 = 46,656 ordered resamples (462 distinct multisets), enumerated exactly.
    base = np.array([10.0, 12.0, 9.5, 11.0, 10.5, 13.0])
    cand = np.array([9.0, 11.5, 9.0, 10.0, 10.4, 11.0])
    values, probs = exact_bootstrap_distribution(base, cand, statistic)
    assert probs.sum() == pytest.approx(1.0)
    exact_low, exact_high = (_weighted_quantile(values, probs, q) for q in (0.025, 0.975))
    iv = paired_bootstrap(base, cand, statistic, resamples=200_000, seed=1)
    spread = exact_high - exact_low
    assert iv.low == pytest.approx(exact_low, abs=0.03 * spread)
    assert iv.high == pytest.approx(exact_high, abs=0.03 * spread)
    assert iv.estimate == pytest.approx(float(statistic(base[None], cand[None])[0]))


def test_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.4, size=40)
    cand = base + rng.normal(0.05, 0.1, size=40)  # paired: the candidate tracks each window
    ours = paired_bootstrap(base, cand, mean_difference, resamples=20_000, seed=2)
    ref = stats.bootstrap((base, cand), lambda a, b, axis=-1: b.mean(axis) - a.mean(axis), paired=True,
                          vectorized=True, n_resamples=20_000, method="percentile", confidence_level=0.95,
                          random_state=3).confidence_interval
    spread = ref.high - ref.low
    assert ours.low == pytest.approx(ref.low, abs=0.03 * spread)
    assert ours.high == pytest.approx(ref.high, abs=0.03 * spread)
    # Pairing matters: the unpaired interval of the same data is several times wider.
    unpaired = stats.bootstrap((base, cand), lambda a, b, axis=-1: b.mean(axis) - a.mean(axis),
                               vectorized=True, n_resamples=5_000, method="percentile",
                               random_state=3).confidence_interval
    assert (unpaired.high - unpaired.low) > 3 * spread


def test_identical_samples_give_a_point_interval_and_bad_shapes_fail():
    same = [0.0, 1.0, 1.0, 0.0, 1.0]
    iv = paired_bootstrap(same, same, mean_difference)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    iv = paired_bootstrap([2.0, 4.0], [2.0, 4.0], ratio_of_means)
    assert (iv.low, iv.high) == (1.0, 1.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap([1.0, 2.0], [1.0], mean_difference)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], mean_difference, confidence=1.0)


def test_reproducible_with_a_seed():
    a, b = np.arange(20.0), np.arange(20.0)[::-1]
    first = paired_bootstrap(a, b, mean_difference, seed=7)
    assert first == paired_bootstrap(a, b, mean_difference, seed=7)
    assert first != paired_bootstrap(a, b, mean_difference, seed=8)
