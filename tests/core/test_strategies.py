"""Strategy semantics: exact sampling with an oracle, margin vs top-probability ranking, K rules, noise."""

from __future__ import annotations

import itertools

import pytest
import torch

from unmask.core.decoding.loop import decode
from unmask.core.engine import FunctionEngine
from unmask.core.strategy import StepInput, build_strategy

L, V = 3, 2
MASK = V
# A small joint distribution over {0,1}^3 with strong dependencies.
JOINT = torch.tensor([0.30, 0.02, 0.05, 0.13, 0.07, 0.18, 0.01, 0.24], dtype=torch.float64)
SEQS = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (8, 3), row-major order matches JOINT


def oracle_engine() -> FunctionEngine:
    """Exact conditionals p(x_i | observed positions) of JOINT, as logits."""

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        logits = torch.zeros(B, L, V + 1)
        for b in range(B):
            obs = tokens[b] != MASK
            consistent = (SEQS[:, obs] == tokens[b][obs]).all(dim=1)
            w = JOINT * consistent
            for i in range(L):
                p = torch.stack([w[SEQS[:, i] == v].sum() for v in range(V)])
                logits[b, i, :V] = torch.log(p / p.sum()).float()
        return logits

    return FunctionEngine(fn, V + 1, L)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    exp = probs * n
    return float(((counts - exp) ** 2 / exp).sum())


@pytest.mark.parametrize(
    "section",
    [
        {"name": "vanilla", "steps": 400},  # independent reveals; simultaneous ones are rare with many steps
        {"name": "top_prob", "steps": L, "value": "sample"},
        {"name": "margin", "steps": L, "value": "sample"},
    ],
)
def test_samples_follow_the_true_distribution(section):
    n = 3000
    strat = build_strategy(section)
    inputs = torch.full((n, L), MASK)
    given = torch.zeros(n, L, dtype=torch.bool)
    res = decode(oracle_engine(), inputs, given, strat, mask_id=MASK, generator=torch.Generator().manual_seed(7))
    idx = (res.tokens * torch.tensor([4, 2, 1])).sum(dim=1)
    counts = torch.bincount(idx, minlength=8).double()
    # chi-square with 7 degrees of freedom: 24.32 is the 0.999 quantile
    assert chi_square(counts, JOINT) < 24.32, counts


def _step_input(probs: torch.Tensor, steps: int = 10) -> StepInput:
    B, Lx, Vx = probs.shape
    logits = torch.log(probs)
    return StepInput(
        logits=logits,
        tokens=torch.full((B, Lx), Vx),
        masked=torch.ones(B, Lx, dtype=torch.bool),
        given=torch.zeros(B, Lx, dtype=torch.bool),
        step=torch.zeros(B, dtype=torch.int64),
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        mask_id=Vx,
    )


def test_margin_ranks_near_tie_below_confident_position():
    # position 0: near tie 0.45 / 0.44; position 1: top 0.42 but a clear margin
    probs = torch.tensor([[[0.45, 0.44, 0.11], [0.42, 0.29, 0.29]]])
    x = _step_input(probs, steps=2)  # K = round(2 / 2) = 1
    margin = build_strategy({"name": "margin", "steps": 2}).step(x)
    top = build_strategy({"name": "top_prob", "steps": 2}).step(x)
    assert margin.commit.tolist() == [[False, True]]
    assert top.commit.tolist() == [[True, False]]


def test_quota_is_per_row_and_last_step_commits_all():
    s = build_strategy({"name": "margin", "steps": 4})
    probs = torch.softmax(torch.randn(3, 12, 5, generator=torch.Generator().manual_seed(1)), dim=-1)
    x = _step_input(probs, steps=4)
    x.step = torch.tensor([0, 2, 3])
    x.masked[0, 6:] = False
    k = s.quota(x, x.masked.sum(dim=1))
    # 6 masked / 4 remaining -> round(1.5) = 2; 12 / 2 = 6; last step -> all 12
    assert k.tolist() == [2, 6, 12]
    out = s.step(x)
    assert out.commit.sum(dim=1).tolist() == [2, 6, 12]


def test_binomial_quota_is_at_least_one_and_reproducible():
    s = build_strategy({"name": "margin", "steps": 50, "k_rule": "binomial"})
    probs = torch.softmax(torch.randn(64, 20, 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    x1 = _step_input(probs, steps=50)
    x2 = _step_input(probs, steps=50)
    k1 = s.quota(x1, x1.masked.sum(dim=1))
    k2 = s.quota(x2, x2.masked.sum(dim=1))
    assert bool((k1 >= 1).all()) and torch.equal(k1, k2)
    assert k1.float().mean() < 3  # E[K] = 20 / 50 (clamped to >= 1)


def test_gumbel_noise_changes_order_and_anneals_to_none():
    probs = torch.softmax(torch.randn(1, 30, 5, generator=torch.Generator().manual_seed(3)) * 2, dim=-1)
    plain = build_strategy({"name": "margin", "steps": 3})
    noisy = build_strategy({"name": "margin", "steps": 3, "noise": "gumbel", "noise_scale": 5.0})
    x = _step_input(probs, steps=3)
    assert not torch.equal(plain.step(x).commit, noisy.step(x).commit)
    annealed = build_strategy({"name": "margin", "steps": 3, "noise": "gumbel", "noise_scale": 5.0, "noise_anneal": True})
    x_last = _step_input(probs, steps=3)
    x_last.step = torch.tensor([2])
    assert float(annealed.noise_scale(x_last).abs().max()) < 3.4  # 5 * (1 - 2/3)


def test_sampled_values_follow_temperature():
    probs = torch.tensor([[[0.7, 0.2, 0.1]]]).expand(1, 4000, 3).contiguous()
    s = build_strategy({"name": "margin", "steps": 1, "value": "sample", "temperature": 1.0})
    x = _step_input(probs, steps=1)
    vals = s.choose_values(x)
    freq = torch.bincount(vals[0], minlength=3).double() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), atol=0.03)
    hot = build_strategy({"name": "margin", "steps": 1, "value": "sample", "temperature": 100.0}).choose_values(x)
    assert torch.bincount(hot[0], minlength=3).min() > 1100  # nearly uniform


def test_argmax_never_picks_the_mask_token():
    eng = FunctionEngine(lambda t: torch.zeros(t.shape[0], t.shape[1], 3).index_fill_(2, torch.tensor([2]), 9.0), 3, 5)
    res = decode(eng, torch.full((2, 5), 2), torch.zeros(2, 5, dtype=torch.bool), build_strategy("margin"),
                 mask_id=2, generator=torch.Generator().manual_seed(0))
    assert not bool((res.tokens == 2).any())
