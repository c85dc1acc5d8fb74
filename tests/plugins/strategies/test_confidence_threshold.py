"""confidence_threshold: exactly the candidates with max prob >= tau, at least the best one, all on the last step."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.decoding.loop import decode
from unmask.core.strategy import build_strategy


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), tau=st.floats(0.05, 1.0), step=st.integers(0, 18), sharp=st.floats(0.5, 6.0))
def test_commits_exactly_the_positions_above_tau(make_input, seed, tau, step, sharp):
    x = make_input(seed, step=step, sharp=sharp)
    out = build_strategy({"name": "confidence_threshold", "tau": tau, "steps": 20}).step(x)
    conf = torch.softmax(x.logits, dim=-1).amax(dim=-1)
    above = x.masked & (conf >= tau)
    for b in range(x.masked.shape[0]):
        if above[b].any():
            assert torch.equal(out.commit[b], above[b])
        else:  # only the single most confident candidate
            assert int(out.commit[b].sum()) == 1
            best = conf[b].masked_fill(~x.masked[b], -1).argmax()
            assert bool(out.commit[b, best])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), tau=st.floats(0.0, 0.99), step=st.integers(0, 18), sharp=st.floats(0.5, 6.0))
def test_margin_score_thresholds_the_top_two_gap(make_input, seed, tau, step, sharp):
    x = make_input(seed, step=step, sharp=sharp)
    out = build_strategy({"name": "confidence_threshold", "tau": max(tau, 1e-3), "score": "margin",
                          "steps": 20}).step(x)
    top = torch.softmax(x.logits, dim=-1).topk(2, dim=-1).values
    gap = top[..., 0] - top[..., 1]
    above = x.masked & (gap >= max(tau, 1e-3))
    for b in range(x.masked.shape[0]):
        if above[b].any():
            assert torch.equal(out.commit[b], above[b])
        else:  # the single candidate with the widest gap, which need not be the most probable one
            assert int(out.commit[b].sum()) == 1
            assert bool(out.commit[b, gap[b].masked_fill(~x.masked[b], -1).argmax()])


def test_last_step_commits_everything(make_input):
    x = make_input(1, step=19, sharp=0.1)
    out = build_strategy({"name": "confidence_threshold", "tau": 0.99, "steps": 20}).step(x)
    assert torch.equal(out.commit, x.masked)


def test_schedule_floor(make_input):
    x = make_input(2, step=0, sharp=0.1, L=40, p_given=0.0, p_masked=1.0)
    s = build_strategy({"name": "confidence_threshold", "tau": 0.99, "steps": 4, "at_least": "schedule"})
    out = s.step(x)
    assert torch.equal(out.commit.sum(dim=1), s.quota(x, x.masked.sum(dim=1)))  # 10 per row, none above tau


def test_blocks_restrict_candidates(make_input):
    x = make_input(3, step=0, sharp=8.0, L=12, p_given=0.0, p_masked=1.0)
    out = build_strategy({"name": "confidence_threshold", "tau": 0.1, "steps": 20, "block_size": 4}).step(x)
    assert not bool(out.commit[:, 4:].any()) and bool(out.commit[:, :4].all())


def test_confident_model_needs_few_passes():
    from unmask.core.engine import FunctionEngine

    V, L = 4, 16
    target = torch.arange(L) % V

    def fn(tokens):  # knows the answer for sure
        logits = torch.full((tokens.shape[0], L, V + 1), -10.0)
        logits[:, torch.arange(L), target] = 10.0
        return logits

    inputs = torch.full((3, L), V)
    res = decode(FunctionEngine(fn, V + 1, L), inputs, torch.zeros(3, L, dtype=torch.bool),
                 build_strategy({"name": "confidence_threshold", "steps": 50}), mask_id=V,
                 generator=torch.Generator())
    assert res.nfe.tolist() == [1, 1, 1] and torch.equal(res.tokens, target.expand(3, L))
