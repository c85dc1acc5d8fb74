"""Rows with different strategies and step budgets share one engine call per step, each decided as alone."""

from __future__ import annotations

import torch

from unmask.core.decoding.loop import decode
from unmask.core.decoding.mixed import MixedStrategies
from unmask.core.decoding.schedule import decode_many
from unmask.core.engine import FunctionEngine
from unmask.core.strategy import build_strategy

V, L, MASK = 12, 16, 11


def _logits(tokens: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(tokens.sum()) % 1000)
    base = torch.randn(1, L, V, generator=g)
    return (base * 3 + torch.nn.functional.one_hot(tokens % V, V) * 0.1).expand(tokens.shape[0], -1, -1).clone()


def _rowwise(tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([_logits(t[None]) for t in tokens])


def test_each_row_decodes_as_with_its_own_strategy_alone() -> None:
    specs = [{"name": "margin", "steps": 8}, {"name": "top_prob", "steps": 12, "block_size": 4, "block_steps": "even"},
             {"name": "confidence_threshold", "tau": 0.5, "steps": 6}, {"name": "margin", "steps": 16}]
    strategies = [build_strategy(s) for s in specs]
    x = torch.randint(0, MASK, (4, L))
    x[:, 4:] = MASK
    given = x != MASK
    mixed = MixedStrategies(strategies[0], max_steps=16)
    for i, s in enumerate(strategies):
        mixed.assign([i], s)
    engine = FunctionEngine(_rowwise, V, L)
    together = decode(engine, x, given, mixed, mask_id=MASK, generator=torch.Generator())
    assert engine.calls == int(together.nfe.max())  # one call per step for all rows
    cont = decode_many(FunctionEngine(_rowwise, V, L), x, given, mixed, mask_id=MASK, generator=torch.Generator(),
                       batch_size=2)
    for i, s in enumerate(strategies):
        alone = decode(FunctionEngine(_rowwise, V, L), x[i : i + 1], given[i : i + 1], s, mask_id=MASK,
                       generator=torch.Generator())
        assert torch.equal(together.tokens[i], alone.tokens[0]), specs[i]
        assert int(together.nfe[i]) == int(alone.nfe[0]) <= s.steps
        assert torch.equal(cont.tokens[i], alone.tokens[0])
    mixed.release([0, 1, 2, 3])
    assert not mixed.rows


def test_equal_options_share_one_strategy_call() -> None:
    mixed = MixedStrategies(build_strategy({"name": "margin", "steps": 8}), max_steps=16)
    for i in range(4):  # four requests, each with its own (equal) strategy object
        mixed.assign([i], build_strategy({"name": "top_prob", "steps": 12}))
    mixed.assign([4], build_strategy({"name": "top_prob", "steps": 10}))
    groups = mixed._groups(torch.arange(6), 6)
    assert sorted(len(rows) for _, rows in groups) == [1, 1, 4]  # top_prob/12, top_prob/10, the default
