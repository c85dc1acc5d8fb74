"""The pure helpers of ``bench/serve.py``'s text mode: arrivals, generation lengths, load-point summaries and the
step-cost fit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_serve_text", ROOT / "bench" / "serve.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_arrivals_are_seeded_bounded_and_poisson() -> None:
    a = bench.arrivals(10.0, 50.0, 100_000, seed=3)
    assert np.array_equal(a, bench.arrivals(10.0, 50.0, 100_000, seed=3))
    assert np.all(np.diff(a) > 0) and a[-1] <= 50.0
    assert 400 < len(a) < 600  # ~ rate x seconds
    assert len(bench.arrivals(1000.0, 600.0, 48, seed=1)) == 48  # a burst: bounded in count
    assert len(bench.arrivals(0.001, 1.0, 10, seed=0)) == 1  # never empty


def test_draw_lengths_cover_the_range_inclusively() -> None:
    g = bench.draw_lengths(5000, 8, 128, seed=0)
    assert g.min() == 8 and g.max() == 128
    assert np.array_equal(g, bench.draw_lengths(5000, 8, 128, seed=0))
    with pytest.raises(ValueError):
        bench.draw_lengths(3, 9, 8, seed=0)


def test_summarize_throughput_and_percentiles() -> None:
    lat = np.array([1.0, 2.0, 3.0, 4.0])
    s = bench.summarize(lat, np.array([8, 16, 64, 128]), np.array([8, 10, 60, 100]), span=2.0, short=16)
    assert s["rows_per_s"] == 2.0 and s["tokens_per_s"] == 89.0 and s["positions_per_s"] == 108.0
    assert s["p50"] == 2.5 and s["mean"] == 2.5 and s["p99"] <= 4.0
    assert s["short_p90"] == pytest.approx(np.percentile([1.0, 2.0], 90))
    empty = bench.summarize(np.array([]), np.array([]), np.array([]), span=float("nan"), short=16)
    assert all(np.isnan(v) for v in empty.values())


def test_fit_step_cost_recovers_a_line_and_stays_nonnegative() -> None:
    x = [1.0, 4.0, 10.0, 30.0]
    a, b = bench.fit_step_cost(x, [2.0 + 0.5 * v for v in x])
    assert a == pytest.approx(2.0) and b == pytest.approx(0.5)
    assert bench.fit_step_cost([5.0, 5.0], [3.0, 5.0]) == (4.0, 0.0)  # one row count: flat
    a, b = bench.fit_step_cost([1.0, 10.0, float("nan")], [9.0, 1.0, 2.0])  # falling: clamped flat, nan ignored
    assert b == 0.0 and a == pytest.approx(5.0)
