"""remask: re-masks the least confident decoded positions, never given ones, and ends with no masks."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unmask.core.decoding.loop import decode
from unmask.core.engine import FunctionEngine
from unmask.core.strategy import StepInput, StepOutput, build_strategy


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), step=st.integers(0, 19), eta=st.floats(0.0, 1.0), stop=st.floats(0.1, 1.0))
def test_remasks_the_least_confident_decoded_positions(make_input, seed, step, eta, stop):
    x = make_input(seed, step=step, L=24, p_given=0.3, p_masked=0.5)
    s = build_strategy({"name": "remask", "steps": 20, "eta": eta, "stop": stop})
    out = s.step(x)
    assert out.remask is not None
    assert not bool((out.remask & x.given).any())  # never a given position
    assert not bool((out.remask & x.masked).any())  # only decoded positions
    assert not bool((out.remask & out.commit).any())  # never what it just committed
    probs = torch.softmax(x.logits, dim=-1)
    conf = probs.gather(-1, x.tokens.clamp(max=probs.shape[-1] - 1)[..., None]).squeeze(-1)
    decoded = ~x.masked & ~x.given
    decay = 0.0 if step == 19 else max(0.0, 1.0 - step / (stop * 20))
    for b in range(x.masked.shape[0]):
        k = int(out.commit[b].sum())
        want = min(math.floor(eta * decay * k + 1e-9), int(decoded[b].sum()))
        assert int(out.remask[b].sum()) == want
        if want and bool((decoded[b] & ~out.remask[b]).any()):
            assert float(conf[b][out.remask[b]].max()) <= float(conf[b][decoded[b] & ~out.remask[b]].min())
    if step == 19:
        assert torch.equal(out.commit, x.masked) and not bool(out.remask.any())


class Counting:
    """Wraps a strategy; counts the positions each row commits over the run."""

    def __init__(self, inner):
        self.inner, self.name, self.options, self.commits = inner, inner.name, inner.options, 0

    @property
    def steps(self):
        return self.inner.steps

    def step(self, x: StepInput) -> StepOutput:
        out = self.inner.step(x)
        self.commits += int(out.commit.sum())
        return out


def shifting_engine(V: int, L: int) -> FunctionEngine:
    """Confidence in a decoded token depends on the others, so the model changes its mind and remasking happens."""

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        h = (tokens * torch.arange(1, L + 1)).sum(dim=1)  # (B,)
        x = (h[:, None, None] * 13 + torch.arange(L)[None, :, None] * 7 + torch.arange(V + 1)[None, None, :] * 5) % 11
        return x.float() / 3.0

    return FunctionEngine(fn, V + 1, L)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 16), value=st.sampled_from(["argmax", "sample"]))
def test_decode_loop_ends_with_no_masks_and_givens_intact(seed, steps, value):
    V, L, B = 4, 14, 6
    g = torch.Generator().manual_seed(seed)
    given_mask = torch.rand(B, L, generator=g) < 0.3
    inputs = torch.where(given_mask, torch.randint(0, V, (B, L), generator=g), torch.full((B, L), V))
    strat = Counting(build_strategy({"name": "remask", "steps": steps, "eta": 0.9, "value": value}))
    res = decode(shifting_engine(V, L), inputs, given_mask, strat, mask_id=V, generator=g, trace=True)
    assert not bool((res.tokens == V).any())
    assert torch.equal(res.tokens[given_mask], inputs[given_mask])
    assert bool((res.nfe <= steps).all())
    assert bool((res.order[~given_mask] >= 1).all()) and bool((res.order[given_mask] == 0).all())
    assert strat.commits >= int((~given_mask).sum())


def test_remasking_happens():
    V, L, B = 4, 14, 8
    inputs = torch.full((B, L), V)
    strat = Counting(build_strategy({"name": "remask", "steps": 10, "eta": 0.9, "stop": 1.0}))
    res = decode(shifting_engine(V, L), inputs, torch.zeros(B, L, dtype=torch.bool), strat, mask_id=V,
                 generator=torch.Generator())
    assert strat.commits > B * L  # some positions were committed twice
    assert not bool((res.tokens == V).any())
