"""factor: rank r (0-based, by score) commits iff score >= 1 - f / (r + 1); at least one; all on the last step."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.strategy import build_strategy, top_two


def brute_force(scores: torch.Tensor, cand: torch.Tensor, f: float) -> torch.Tensor:
    commit = torch.zeros_like(cand)
    for b in range(cand.shape[0]):
        idx = cand[b].nonzero().squeeze(1).tolist()
        idx.sort(key=lambda i: (-float(scores[b, i]), i))
        for r, i in enumerate(idx):
            if float(scores[b, i]) >= 1.0 - f / (r + 1):
                commit[b, i] = True
            else:
                break
        if idx and not commit[b].any():
            commit[b, idx[0]] = True
    return commit


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), f=st.floats(0.0, 3.0), step=st.integers(0, 18), sharp=st.floats(0.5, 8.0),
       score=st.sampled_from(["top_prob", "margin"]))
def test_factor_rule(make_input, seed, f, step, sharp, score):
    x = make_input(seed, step=step, sharp=sharp, L=16, V=4)
    out = build_strategy({"name": "factor", "f": f, "score": score, "steps": 20}).step(x)
    probs = torch.softmax(x.logits, dim=-1)
    p1, p2 = top_two(probs)
    s = p1 - p2 if score == "margin" else p1
    assert torch.equal(out.commit, brute_force(s, x.masked, f))


def test_last_step_commits_everything(make_input):
    x = make_input(4, step=9, steps=10, sharp=0.1)
    out = build_strategy({"name": "factor", "f": 0.01, "steps": 10}).step(x)
    assert torch.equal(out.commit, x.masked)
