"""The continuous-batching scheduler: request order, equality with one-at-a-time decoding, no slot leaks,
shrinking, NFE accounting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unmask.core.decoding.loop import decode
from unmask.core.engine import FunctionEngine
from unmask.core.errors import InputError, PluginError
from unmask.core.decoding.schedule import decode_many
from unmask.core.strategy import StepOutput, Strategy, build_strategy

DETERMINISTIC = [
    {"name": "margin"},
    {"name": "top_prob"},
    {"name": "entropy"},
    {"name": "confidence_threshold", "tau": 0.5},
    {"name": "factor", "f": 1.0},
    {"name": "entropy_bound", "gamma": 0.5},
    {"name": "remask", "eta": 0.9},
    {"name": "margin", "block_size": 3},
]


class RowEngine(FunctionEngine):
    """A fake model whose logits are an exact (integer-valued) function of the row alone, so a row's logits do not
    depend on the rest of the batch; it records the batch size of every call."""

    def __init__(self, V: int, L: int, max_batch: int | None = None) -> None:
        self.sizes: list[int] = []
        pos = torch.arange(L)
        w = torch.arange(1, L + 1)
        v = torch.arange(V + 1)

        def fn(tokens: torch.Tensor) -> torch.Tensor:
            self.sizes.append(int(tokens.shape[0]))
            h = (tokens * w[: tokens.shape[1]]).sum(dim=1)  # (B,)
            x = (h[:, None, None] * 31 + pos[None, :, None] * 17 + v[None, None, :] * 7 + h[:, None, None] % 5 * pos[None, :, None]) % 23
            return x.float() / 4.0  # (B, L, V + 1); column V is the mask token

        super().__init__(fn, V + 1, L, max_batch=max_batch)


def requests(N: int, L: int, V: int, seed: int, p_given: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (N, L), generator=g)
    # rows get different numbers of givens, so they finish at different steps
    frac = torch.rand(N, 1, generator=g) * p_given * 2
    given_mask = torch.rand(N, L, generator=g) < frac
    return torch.where(given_mask, tokens, torch.full_like(tokens, V)), given_mask


def alone(section: dict, inputs: torch.Tensor, given_mask: torch.Tensor, V: int, steps: int):
    """Decode each request in a batch of its own."""
    toks, nfes, orders = [inputs[:0]], [inputs[:0, 0]], [inputs[:0]]
    for i in range(inputs.shape[0]):
        r = decode(RowEngine(V, inputs.shape[1]), inputs[i : i + 1], given_mask[i : i + 1],
                   build_strategy({**section, "steps": steps}), mask_id=V,
                   generator=torch.Generator().manual_seed(0), trace=True)
        toks.append(r.tokens)
        nfes.append(r.nfe)
        orders.append(r.order)
    return torch.cat(toks), torch.cat(nfes), torch.cat(orders)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(DETERMINISTIC),
    N=st.integers(0, 13),
    L=st.integers(1, 10),
    V=st.integers(2, 5),
    bs=st.integers(1, 6),
    steps=st.integers(1, 9),
    seed=st.integers(0, 10_000),
)
def test_equals_one_at_a_time_in_request_order(section, N, L, V, bs, steps, seed):
    inputs, given_mask = requests(N, L, V, seed)
    eng = RowEngine(V, L)
    strat = build_strategy({**section, "steps": steps})
    assert strat.deterministic
    heard: list[tuple[int, torch.Tensor, int, int]] = []  # (request id, tokens, nfe, engine rows so far)

    def on_finish(ids: torch.Tensor, tokens: torch.Tensor, nfe: torch.Tensor) -> None:
        heard.extend((int(i), t.clone(), int(n), eng.rows) for i, t, n in zip(ids, tokens, nfe, strict=True))

    res = decode_many(eng, inputs, given_mask, strat, mask_id=V, generator=torch.Generator().manual_seed(1),
                      batch_size=bs, trace=True, on_finish=on_finish)
    tok, nfe, order = alone(section, inputs, given_mask, V, steps)
    assert torch.equal(res.tokens, tok) and torch.equal(res.nfe, nfe) and torch.equal(res.order, order)
    # on_finish hears of every request once, already final, and before the decoding ends (rows that finish on an
    # early pass are reported before the later passes run)
    assert sorted(i for i, *_ in heard) == list(range(N))
    for i, t, n, _ in heard:
        assert torch.equal(t, res.tokens[i]) and n == int(res.nfe[i])
    rows_when_heard = [r for *_, r in heard]
    assert rows_when_heard == sorted(rows_when_heard)
    if N and int(res.nfe.min()) < int(res.nfe.max()):
        assert rows_when_heard[0] < eng.rows
    # no slot leaks: every engine row belongs to exactly one forward pass of one unfinished request
    assert eng.rows == int(res.nfe.sum())
    assert max(eng.sizes, default=0) <= bs
    # the queue is drained and every request comes back finished, givens untouched
    assert not bool((res.tokens == V).any())
    assert torch.equal(res.tokens[given_mask], inputs[given_mask])
    assert bool((res.nfe <= steps).all())


def test_same_as_static_decode_of_the_whole_batch():
    inputs, given_mask = requests(40, 9, 4, seed=3)
    strat = build_strategy({"name": "margin", "steps": 7})
    a = decode(RowEngine(4, 9), inputs, given_mask, strat, mask_id=4, generator=torch.Generator().manual_seed(0))
    b = decode_many(RowEngine(4, 9), inputs, given_mask, strat, mask_id=4, generator=torch.Generator().manual_seed(0),
                    batch_size=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe, b.nfe)


def test_full_while_queued_then_shrinks():
    # Rows need very different numbers of steps: many givens finish fast, none given take all steps.
    V, L, steps = 3, 12, 10
    inputs, given_mask = requests(30, L, V, seed=5, p_given=0.45)
    eng = RowEngine(V, L)
    res = decode_many(eng, inputs, given_mask, build_strategy({"name": "top_prob", "steps": steps}), mask_id=V,
                      generator=torch.Generator().manual_seed(0), batch_size=8)
    sizes = eng.sizes
    assert len(sizes) == eng.calls
    # while the queue holds requests the table stays full ...
    full = [s == 8 for s in sizes]
    assert full[0]
    first_short = full.index(False)
    assert all(full[:first_short])
    # ... then the batch only shrinks, down to the last live rows
    tail = sizes[first_short:]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    assert tail[-1] < 8
    assert eng.rows == int(res.nfe.sum())


def test_fewer_engine_calls_than_static_batches():
    """Continuous batching needs no more forward passes than fixed batches, and fewer rows are wasted."""
    V, L, steps = 3, 12, 10
    inputs, given_mask = requests(64, L, V, seed=9, p_given=0.45)
    strat = build_strategy({"name": "top_prob", "steps": steps})
    cont = RowEngine(V, L)
    decode_many(cont, inputs, given_mask, strat, mask_id=V, generator=torch.Generator().manual_seed(0), batch_size=16)
    static = RowEngine(V, L)
    for s in range(0, 64, 16):
        decode(static, inputs[s : s + 16], given_mask[s : s + 16], strat, mask_id=V,
               generator=torch.Generator().manual_seed(0))
    assert cont.rows == static.rows  # the same work ...
    assert cont.calls <= static.calls  # ... in no more (and fuller) engine calls


def test_nfe_accounting_and_finished_inputs():
    V, L = 4, 6
    inputs = torch.full((5, L), V)
    given_mask = torch.zeros(5, L, dtype=torch.bool)
    given_mask[1] = True  # fully given: never sent to the engine
    given_mask[3, :5] = True  # one blank: one forward pass
    inputs[given_mask] = 1
    eng = RowEngine(V, L)
    res = decode_many(eng, inputs, given_mask, build_strategy({"name": "top_prob", "steps": 4}), mask_id=V,
                      generator=torch.Generator().manual_seed(0), batch_size=2, trace=True, progress=True)
    assert res.nfe.tolist() == [4, 0, 4, 1, 4]
    assert eng.rows == 13
    assert torch.equal(res.tokens[1], inputs[1]) and bool((res.order[1] == 0).all())
    assert res.order[3].tolist() == [0, 0, 0, 0, 0, 1]


def test_empty_request_list():
    eng = RowEngine(3, 4)
    res = decode_many(eng, torch.zeros((0, 4), dtype=torch.int64), torch.zeros((0, 4), dtype=torch.bool),
                      build_strategy("margin"), mask_id=3, generator=torch.Generator(), batch_size=4)
    assert res.tokens.shape == (0, 4) and res.nfe.shape == (0,) and eng.calls == 0


def test_engine_max_batch_caps_the_table():
    inputs, given_mask = requests(20, 6, 3, seed=1)
    eng = RowEngine(3, 6, max_batch=3)
    decode_many(eng, inputs, given_mask, build_strategy("margin"), mask_id=3, generator=torch.Generator(),
                batch_size=64)
    assert max(eng.sizes) == 3


def test_random_strategy_reproducible_and_complete():
    inputs, given_mask = requests(25, 8, 4, seed=2)
    runs = []
    for _ in range(2):
        strat = build_strategy({"name": "vanilla", "steps": 6})
        runs.append(decode_many(RowEngine(4, 8), inputs, given_mask, strat, mask_id=4,
                                generator=torch.Generator().manual_seed(11), batch_size=4))
    assert torch.equal(runs[0].tokens, runs[1].tokens) and torch.equal(runs[0].nfe, runs[1].nfe)
    assert not bool((runs[0].tokens == 4).any()) and bool((runs[0].nfe <= 6).all())
    assert torch.equal(runs[0].tokens[given_mask], inputs[given_mask])


@pytest.mark.parametrize("bs", [0, -1, 2.5, True])
def test_bad_batch_size(bs):
    inputs, given_mask = requests(3, 4, 3, seed=0)
    with pytest.raises(InputError, match="batch_size"):
        decode_many(RowEngine(3, 4), inputs, given_mask, build_strategy("margin"), mask_id=3,
                    generator=torch.Generator(), batch_size=bs)


def test_shares_the_decode_loop_checks():
    class Lazy(Strategy):
        name = "lazy"

        def step(self, x):
            return StepOutput(commit=torch.zeros_like(x.masked), values=x.tokens)

    inputs, given_mask = requests(3, 4, 3, seed=0)
    with pytest.raises(PluginError, match="committed nothing"):
        decode_many(RowEngine(3, 4), inputs, given_mask, Lazy(), mask_id=3, generator=torch.Generator(), batch_size=2)
    with pytest.raises(InputError, match="int64"):
        decode_many(RowEngine(3, 4), inputs.int(), given_mask, Lazy(), mask_id=3, generator=torch.Generator(),
                    batch_size=2)
