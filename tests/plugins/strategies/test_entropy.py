"""entropy: the K lowest-entropy candidates (linear-schedule K), score = -H."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.strategy import build_strategy, entropy


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), step=st.integers(0, 19))
def test_commits_the_k_lowest_entropy_candidates(make_input, seed, step):
    x = make_input(seed, step=step)
    s = build_strategy({"name": "entropy", "steps": 20})
    out = s.step(x)
    h = entropy(torch.softmax(x.logits, dim=-1))
    k = s.quota(x, x.masked.sum(dim=1))
    assert torch.equal(out.commit.sum(dim=1), k)
    for b in range(x.masked.shape[0]):
        cand = x.masked[b]
        chosen = h[b][out.commit[b]]
        rest = h[b][cand & ~out.commit[b]]
        if chosen.numel() and rest.numel():
            assert chosen.max() <= rest.min()
    assert torch.equal(out.values[out.commit], x.logits.argmax(-1)[out.commit])
