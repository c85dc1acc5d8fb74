"""Uncertainty of the rates that experiments report: a Wilson score interval for one % solved (a bootstrap one for
scores that are fractions), and a paired
bootstrap interval for the difference of two decodings scored on the same examples (the ordering effect: margin
against vanilla on one test set). Both at 95% unless told otherwise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate: ``k`` successes of ``n`` (n > 0). Unlike the normal approximation
    it stays inside [0, 1] and is not empty at k = 0 or k = n."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))  # exact at the ends


def rate_interval(scores: np.ndarray, *, rng: np.random.Generator, resamples: int = 10_000) -> tuple[float, float]:
    """95% interval of the mean of per-example scores: Wilson's when they are all 0 or 1 (solved or not), else a
    percentile bootstrap (a task may score an example by a fraction, e.g. L&O-NAE-SAT's consistent observations)."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("need at least one score")
    if np.all((x == 0) | (x == 1)):
        return wilson_interval(int(x.sum()), x.size)
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(1000, resamples - i), x.size))].mean(axis=1)
                            for i in range(0, resamples, 1000)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedDifference:
    """mean(a) - mean(b) over the same examples, with a percentile bootstrap interval."""

    n: int
    difference: float
    low: float
    high: float
    a_only: int
    """Examples only ``a`` got right (only ``b``: :attr:`b_only`): the discordant pairs the difference comes from."""
    b_only: int


def paired_difference(a: np.ndarray, b: np.ndarray, *, rng: np.random.Generator, resamples: int = 10_000,
                      level: float = 0.95) -> PairedDifference:
    """The difference of two per-example scores (0/1 or in [0, 1]) on the same examples, in the same order, with a
    ``level`` percentile interval from ``resamples`` bootstrap resamples of the examples (pairs kept together, so
    what the two decodings share does not widen it)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two score arrays of one non-zero length, got {a.size} and {b.size}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1, got {level}, {resamples}")
    d = a - b
    n = d.size
    sums = np.empty(resamples)
    for i in range(0, resamples, 1000):  # in blocks: 10,000 x n indices at once would cost n x 80 kB
        m = min(1000, resamples - i)
        sums[i:i + m] = d[rng.integers(0, n, size=(m, n))].sum(axis=1)
    lo, hi = np.quantile(sums / n, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(n, float(d.mean()), float(lo), float(hi), int(np.sum(d > 0)), int(np.sum(d < 0)))


__all__ = ["PairedDifference", "Z95", "paired_difference", "rate_interval", "wilson_interval"]
