"""The queueing simulation of ``bench/serve.py`` (what a scheduler can reach over a measured step cost)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def linear(a: float, b: float):
    return lambda n: a + b * n


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.5, 50.0), passes=st.lists(st.integers(1, 30), min_size=1, max_size=6),
       seed=st.integers(0, 1000), wait=st.floats(0.0, 0.2))
def test_one_slot_makes_both_modes_first_come_first_served(rate, passes, seed, wait):
    """With one slot neither mode can batch: both serve requests one at a time in arrival order."""
    cost, p = linear(0.002, 0.003), np.array(passes)
    c = bench.simulate("continuous", rate, cost, p, capacity=1, wait_s=wait, requests=200, seed=seed)
    s = bench.simulate("static", rate, cost, p, capacity=1, wait_s=wait, requests=200, seed=seed)
    assert len(c) == len(s) == 200
    np.testing.assert_allclose(np.sort(c), np.sort(s), rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.5, 200.0), capacity=st.integers(1, 64), passes=st.integers(1, 60), seed=st.integers(0, 99))
def test_every_request_answered_and_never_faster_than_alone(rate, capacity, passes, seed):
    cost = linear(0.001, 0.002)
    alone = passes * cost(1)
    for mode in ("continuous", "static"):
        lat = bench.simulate(mode, rate, cost, np.array([passes]), capacity=capacity, wait_s=0.05, requests=300,
                             seed=seed)
        assert len(lat) == 300
        assert lat.min() >= alone - 1e-9


def test_flat_cost_continuous_answers_in_its_own_passes_while_static_waits_for_the_batch():
    """A step that costs the same at any row count: continuous latency is the request's own decode (plus at most one
    step), static's p99 approaches a running batch plus its own: about twice."""
    cost, passes = (lambda n: 0.005), np.array([50])
    c = bench.simulate("continuous", 60.0, cost, passes, capacity=64, wait_s=0.0, requests=3000, seed=1)
    s = bench.simulate("static", 60.0, cost, passes, capacity=64, wait_s=0.0, requests=3000, seed=1)
    assert c.max() <= 51 * 0.005 + 1e-9
    assert 1.8 * 0.25 < np.percentile(s, 99) <= 2 * 0.25 + 1e-9


def test_linear_cost_gives_no_batching_gain():
    """When a step costs a fixed amount per row, both modes saturate at the same throughput: the last of a burst
    finishes after the same total work either way."""
    cost, passes = linear(0.0, 0.004), np.array([10, 20, 30])
    c = bench.simulate("continuous", 1e6, cost, passes, capacity=16, wait_s=0.0, requests=64, seed=3)
    s = bench.simulate("static", 1e6, cost, passes, capacity=16, wait_s=1.0, requests=64, seed=3)
    assert abs(c.max() - s.max()) < 1e-3
