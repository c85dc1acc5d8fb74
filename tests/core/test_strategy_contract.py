"""The contract every registered strategy must honour (built-ins, the example package, any installed plugin)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import context_engine
from unmask.core.decoding.loop import decode
from unmask.core.registry import strategies
from unmask.core.strategy import StepInput, StepOutput, build_strategy

NAMES = strategies.names()


class Recorder:
    """Wraps a strategy and records, per call, how many positions each row committed."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.options = inner.options
        self.commits: list[torch.Tensor] = []

    @property
    def steps(self):
        return self.inner.steps

    def step(self, x: StepInput) -> StepOutput:
        out = self.inner.step(x)
        self.commits.append(out.commit.sum(dim=1))
        return out


@st.composite
def batches(draw):
    B = draw(st.integers(1, 6))
    L = draw(st.integers(1, 12))
    V = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    steps = draw(st.integers(1, 16))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, L), generator=g)
    given = torch.rand(B, L, generator=g) < draw(st.floats(0.0, 0.9))
    inputs = torch.where(given, tokens, torch.full_like(tokens, V))  # mask id = V
    return inputs, given, V, steps, seed


def make(name: str, steps: int):
    return build_strategy({"name": name, "steps": steps})


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_contract(name, batch):
    inputs, given_mask, V, steps, seed = batch
    engine = context_engine(V, inputs.shape[1], seed=seed % 97)
    strat = Recorder(make(name, steps))
    res = decode(engine, inputs, given_mask, strat, mask_id=V, generator=torch.Generator().manual_seed(seed), trace=True)
    # given positions never change; the loop ends with no masks
    assert torch.equal(res.tokens[given_mask], inputs[given_mask])
    assert not bool((res.tokens == V).any())
    # committed positions were masked: every non-given position got a commit step, given ones none
    assert bool((res.order[~given_mask] >= 1).all()) and bool((res.order[given_mask] == 0).all())
    # each call commits >= 1 for every row it was given; NFE per row <= steps
    assert all(bool((c >= 1).all()) for c in strat.commits)
    assert bool((res.nfe <= steps).all())
    masked_rows = (~given_mask).any(dim=1)
    assert bool((res.nfe[masked_rows] >= 1).all()) and bool((res.nfe[~masked_rows] == 0).all())
    # reproducible for a fixed generator
    again = decode(engine, inputs, given_mask, make(name, steps), mask_id=V, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(again.tokens, res.tokens) and torch.equal(again.nfe, res.nfe)


@pytest.mark.parametrize("name", NAMES)
def test_block_option_keeps_contract(name):
    strat = build_strategy({"name": name, "steps": 12, "block_size": 3})
    inputs = torch.full((4, 10), 5)
    given_mask = torch.zeros(4, 10, dtype=torch.bool)
    res = decode(context_engine(5, 10), inputs, given_mask, strat, mask_id=5,
                 generator=torch.Generator().manual_seed(1), trace=True)
    assert not bool((res.tokens == 5).any()) and bool((res.nfe <= 12).all())


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    g = torch.Generator().manual_seed(3)
    inputs = torch.randint(0, 4, (8, 12), generator=g)
    given_mask = torch.rand(8, 12, generator=g) < 0.3
    inputs = torch.where(given_mask, inputs, torch.full_like(inputs, 4))
    eng = context_engine(4, 12)
    cpu = decode(eng, inputs, given_mask, make(name, 10), mask_id=4, generator=torch.Generator().manual_seed(0))
    gpu = decode(eng, inputs.cuda(), given_mask.cuda(), make(name, 10), mask_id=4,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(cpu.tokens, gpu.tokens.cpu()) and torch.equal(cpu.nfe, gpu.nfe.cpu())
