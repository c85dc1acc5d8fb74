"""Helpers for the per-strategy rule tests: random step inputs with exact control over masks, givens and steps."""

from __future__ import annotations

import pytest
import torch

from unmask.core.strategy import StepInput


def _make_input(seed: int, B: int = 4, L: int = 10, V: int = 5, *, steps: int = 20, step: int | list[int] = 0,
                p_given: float = 0.2, p_masked: float = 0.7, sharp: float = 3.0) -> StepInput:
    """A StepInput whose rows each have >= 1 masked, non-given position; mask id = V (logit -inf)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V + 1, generator=g) * sharp
    logits[..., V] = float("-inf")
    given = torch.rand(B, L, generator=g) < p_given
    masked = ~given & (torch.rand(B, L, generator=g) < p_masked)
    for b in range(B):  # at least one masked position per row
        if not masked[b].any():
            j = int(torch.randint(0, L, (1,), generator=g))
            given[b, j] = False
            masked[b, j] = True
    tokens = torch.randint(0, V, (B, L), generator=g).masked_fill(masked, V)
    step_t = torch.as_tensor(step, dtype=torch.int64).expand(B).clone()
    return StepInput(logits, tokens, masked, given, step_t, steps, torch.Generator().manual_seed(seed), V)


@pytest.fixture(scope="session")
def make_input():
    return _make_input
