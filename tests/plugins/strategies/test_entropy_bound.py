"""entropy_bound: the k lowest-entropy candidates with sum H - max H <= gamma; at least one; all on the last step."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.strategy import build_strategy, entropy


def accepted(h: torch.Tensor, cand: torch.Tensor, gamma: float) -> tuple[list[int], list[list[int]]]:
    """Per row: k by the rule in float64, and the candidates in ascending-entropy order."""
    ks, orders = [], []
    for b in range(cand.shape[0]):
        idx = sorted(cand[b].nonzero().squeeze(1).tolist(), key=lambda i: (float(h[b, i]), i))
        k = 1
        while k < len(idx):
            hs = [float(h[b, i]) for i in idx[: k + 1]]
            if sum(hs) - max(hs) > gamma:
                break
            k += 1
        ks.append(k)
        orders.append(idx)
    return ks, orders


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.0, 0.01, 0.1, 0.5, 2.0, 100.0]),
       step=st.integers(0, 18), sharp=st.floats(0.5, 8.0))
def test_entropy_bound_rule(make_input, seed, gamma, step, sharp):
    x = make_input(seed, step=step, sharp=sharp, L=16, V=4)
    out = build_strategy({"name": "entropy_bound", "gamma": gamma, "steps": 20}).step(x)
    h = entropy(torch.softmax(x.logits, dim=-1)).double()
    k_lo, _ = accepted(h, x.masked, gamma - 1e-5)  # float32 sums may differ only right at the bound
    k_hi, orders = accepted(h, x.masked, gamma + 1e-5)
    for b, idx in enumerate(orders):
        k = int(out.commit[b].sum())
        assert k_lo[b] <= k <= k_hi[b]
        hs = h[b][out.commit[b]]
        rest = h[b][x.masked[b] & ~out.commit[b]]
        if rest.numel():
            assert float(hs.max()) <= float(rest.min()) + 1e-6  # the k lowest entropies


def test_gamma_zero_commits_one_and_infinite_commits_all(make_input):
    x = make_input(5, step=0, sharp=1.0)
    one = build_strategy({"name": "entropy_bound", "gamma": 0.0, "steps": 20}).step(x)
    assert bool((one.commit.sum(dim=1) == 1).all())
    every = build_strategy({"name": "entropy_bound", "gamma": 1e9, "steps": 20}).step(x)
    assert torch.equal(every.commit, x.masked)


def test_last_step_commits_everything(make_input):
    x = make_input(6, step=19, sharp=0.1)
    out = build_strategy({"name": "entropy_bound", "gamma": 0.0, "steps": 20}).step(x)
    assert torch.equal(out.commit, x.masked)
