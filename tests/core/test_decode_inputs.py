"""The decode loop's boundaries: inputs are range-checked, engines and strategies that raise or write into what they
receive are named and cannot change given positions, and a task refuses a non-positive count."""

from __future__ import annotations

import pytest
import torch

from unmask.core.decoding.loop import decode
from unmask.core.decoding.schedule import decode_many
from unmask.core.engine import FunctionEngine
from unmask.core.errors import InputError, PluginError
from unmask.core.strategy import StepInput, StepOutput, build_strategy
from unmask.core.task import build_task

V, L, MASK = 6, 8, 5


def _logits(tokens: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot((tokens + 1) % (V - 1), V).float() * 3.0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[1, 2, MASK, MASK, 3, MASK, 0, MASK]] * 3)
    return x, x != MASK


@pytest.mark.parametrize("run", [decode, lambda *a, **k: decode_many(*a, batch_size=2, **k)])
def test_tokens_and_mask_id_are_range_checked(run) -> None:
    x, given = _batch()
    eng = FunctionEngine(_logits, V, L)
    strat = build_strategy({"name": "margin", "steps": 4})
    bad = x.clone()
    bad[0, 0] = 99
    with pytest.raises(InputError, match="token 99"):
        run(eng, bad, given, strat, mask_id=MASK, generator=torch.Generator())
    with pytest.raises(InputError, match="mask_id 7"):
        run(eng, x, given, strat, mask_id=7, generator=torch.Generator())


def test_engine_that_writes_into_its_input_cannot_change_givens() -> None:
    def vandal(tokens: torch.Tensor) -> torch.Tensor:
        out = _logits(tokens)
        tokens.fill_(0)  # writes into what it was given
        return out

    x, given = _batch()
    res = decode(FunctionEngine(vandal, V, L), x, given, build_strategy({"name": "margin", "steps": 4}),
                 mask_id=MASK, generator=torch.Generator())
    assert torch.equal(res.tokens[given], x[given])


def test_strategy_that_writes_into_its_input_cannot_change_givens() -> None:
    inner = build_strategy({"name": "top_prob", "steps": 4})

    class Vandal:
        name = "vandal"
        steps = 4

        def step(self, s: StepInput) -> StepOutput:
            out = inner.step(s)
            s.tokens.fill_(0)
            s.given.fill_(False)
            return out

    x, given = _batch()
    res = decode(FunctionEngine(_logits, V, L), x, given, Vandal(), mask_id=MASK,  # type: ignore[arg-type]
                 generator=torch.Generator())
    assert torch.equal(res.tokens[given], x[given])


def test_engine_exceptions_are_wrapped_and_named() -> None:
    def broken(tokens: torch.Tensor) -> torch.Tensor:
        raise IndexError("index 12 is out of bounds")

    x, given = _batch()
    with pytest.raises(PluginError, match="engine FunctionEngine failed: IndexError"):
        decode(FunctionEngine(broken, V, L), x, given, build_strategy({"name": "margin", "steps": 4}), mask_id=MASK,
               generator=torch.Generator())


def test_torch_engine_refuses_rows_of_the_wrong_length() -> None:
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.resources import default_model

    eng = open_engine(default_model(), threads=1)
    with pytest.raises(InputError, match="rows of 81 tokens"):
        eng(torch.zeros(2, 40, dtype=torch.long))


@pytest.mark.parametrize("name", ["sudoku", "zebra", "lo_nae_sat"])
def test_generate_counts(name: str) -> None:
    task = build_task(name)
    assert len(task.generate("test", 0, seed=0)) == 0  # nothing asked, nothing made
    for bad in (-1, 2.5, True):
        with pytest.raises(InputError, match="integer >= 0"):
            task.generate("test", bad, seed=0)  # type: ignore[arg-type]
