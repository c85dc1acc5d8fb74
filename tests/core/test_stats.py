"""Intervals of the reported rates: Wilson for one rate, a paired bootstrap for the difference of two decodings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.stats import paired_difference, wilson_interval


def test_wilson_matches_hand_computed_values():
    # k = 0 of 10: [0, z^2 / (n + z^2)]; k = 5 of 10: symmetric about 1/2
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(6, 300)  # the code model's 2.00% single-line margin
    assert lo == pytest.approx(0.00919, abs=1e-4) and hi == pytest.approx(0.04298, abs=1e-4)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)


@given(n=st.integers(1, 5000), frac=st.floats(0, 1))
def test_wilson_is_inside_the_unit_interval_and_holds_the_rate(n, frac):
    k = round(frac * n)
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi - lo > 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), pa=st.floats(0, 1), pb=st.floats(0, 1))
def test_paired_difference_is_antisymmetric_and_holds_the_estimate(seed, n, pa, pb):
    data = np.random.default_rng(seed)
    a, b = data.random(n) < pa, data.random(n) < pb
    d = paired_difference(a, b, rng=np.random.default_rng(0), resamples=500)
    assert d.n == n and d.difference == pytest.approx(a.mean() - b.mean())
    assert -1.0 <= d.low <= d.difference + 1e-12 and d.difference - 1e-12 <= d.high <= 1.0
    assert d.a_only == int(np.sum(a & ~b)) and d.b_only == int(np.sum(b & ~a))
    r = paired_difference(b, a, rng=np.random.default_rng(0), resamples=500)  # the same resamples, mirrored
    assert (r.difference, r.low, r.high) == pytest.approx((-d.difference, -d.high, -d.low))
    assert (r.a_only, r.b_only) == (d.b_only, d.a_only)


def test_paired_difference_agrees_with_the_normal_approximation_and_ignores_shared_outcomes():
    data = np.random.default_rng(1)
    n = 2000
    a = data.random(n) < 0.6
    b = np.where(data.random(n) < 0.8, a, data.random(n) < 0.5)  # mostly the same outcomes: a narrow interval
    d = paired_difference(a, b, rng=np.random.default_rng(2))
    diff = a.astype(float) - b.astype(float)
    half = 1.959964 * diff.std(ddof=1) / math.sqrt(n)
    assert d.low == pytest.approx(diff.mean() - half, abs=0.004) and d.high == pytest.approx(diff.mean() + half,
                                                                                               abs=0.004)
    # unpaired, the same two rates would get a wider interval: the pairing is what narrows it
    unpaired = 1.959964 * math.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
    assert d.high - d.low < 0.6 * 2 * unpaired
    # identical decodings: no difference and no width; the same generator seed: the same interval
    same = paired_difference(a, a, rng=np.random.default_rng(3))
    assert (same.difference, same.low, same.high, same.a_only, same.b_only) == (0.0, 0.0, 0.0, 0, 0)
    again = paired_difference(a, b, rng=np.random.default_rng(2))
    assert (again.low, again.high) == (d.low, d.high)


def test_paired_difference_refuses_unpaired_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one non-zero length"):
        paired_difference(np.ones(3), np.ones(4), rng=rng)
    with pytest.raises(ValueError, match="one non-zero length"):
        paired_difference(np.ones(0), np.ones(0), rng=rng)
    with pytest.raises(ValueError, match="0 < level < 1"):
        paired_difference(np.ones(3), np.ones(3), rng=rng, level=1.0)


def test_rate_interval_is_wilson_for_solved_and_a_bootstrap_for_fractions():
    from unmask.core.stats import rate_interval

    solved = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    assert rate_interval(solved, rng=np.random.default_rng(0)) == wilson_interval(3, 10)
    frac = np.random.default_rng(1).uniform(0.6, 1.0, size=400)  # e.g. the fraction of consistent observations
    lo, hi = rate_interval(frac, rng=np.random.default_rng(0))
    half = 1.959964 * frac.std(ddof=1) / math.sqrt(frac.size)
    assert lo < frac.mean() < hi and (lo, hi) == pytest.approx((frac.mean() - half, frac.mean() + half), abs=0.003)
    with pytest.raises(ValueError, match="at least one score"):
        rate_interval(np.array([]), rng=np.random.default_rng(0))
