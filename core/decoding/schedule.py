"""Continuous batching: a fixed slot table refilled from a queue of requests as rows finish.

A masked diffusion model has no KV cache, so a row's state is just its tokens, its masks and its step counter: a
finished row's slot can take the next request at once, at no cost. Each loop iteration makes ONE engine call on
the live slots; the strategy then runs on those rows, each with its own step counter; rows that finish are
written to the result (in request order) and their slots refilled from the queue. When the queue is empty the
batch shrinks to the live rows, so the tail of a run costs only what is left of it.

The live slots always form a prefix ``[:n]`` of preallocated (B, L) tensors, so the engine and the strategy get
contiguous views with no copy; the table is compacted with index ops only on the iterations where rows finish.
Checks and the state update are shared with :func:`unmask.core.decoding.loop.decode`. The table itself is
:class:`SlotTable`; :func:`decode_many` feeds it from a fixed list of requests, ``unmask serve``
(:mod:`unmask.core.serve`) from a stream of HTTP requests.

For deterministic strategies (``strategy.deterministic``: argmax values, no noise, fixed K) every row's result is
identical to decoding it alone, as long as the engine computes each row independently of the others in the
batch (true for the built-in engines up to floating-point summation order, exactly for row-wise functions).
Random strategies draw from ``generator`` batch-wise, so their draws depend on the batch composition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from unmask.core.decoding.loop import (
    DecodeResult,
    _check_inputs,
    check_lengths,
    check_strategy,
    engine_vocab,
    pass_cap_error,
    run_step,
)
from unmask.core.errors import InputError
from unmask.core.strategy import Strategy


def _device_of(engine: Any, fallback: torch.device) -> torch.device:
    dev = getattr(engine, "device", None)
    return dev if isinstance(dev, torch.device) else fallback


@dataclass
class Finished:
    """Rows that finished on one :meth:`SlotTable.step`: their request ids and final state."""

    ids: torch.Tensor  # (k,) int64 request ids
    tokens: torch.Tensor  # (k, L) int64, no mask left
    nfe: torch.Tensor  # (k,) int64
    order: torch.Tensor | None  # (k, L) int64 with ``trace``


class SlotTable:
    """The slot table: ``capacity`` preallocated rows whose live prefix ``[:n]`` is decoded one step at a time.

    Rows enter with :meth:`admit` (each tagged with an int64 request id), advance with :meth:`step` (one
    :func:`unmask.core.decoding.loop.run_step` on the live rows) and leave when they finish (returned by :meth:`step`)
    or when :meth:`drop` removes them (a cancelled request). This is the one slot-table implementation: the batch
    scheduler :func:`decode_many` and the streaming worker of ``unmask serve`` (:mod:`unmask.core.serve`) both drive it.
    """

    def __init__(self, capacity: int, seq_len: int, *, device: torch.device | str = "cpu", trace: bool = False):
        assert capacity >= 1
        dev = torch.device(device)
        B, L = capacity, seq_len
        self.capacity = B
        self.device = dev
        self.tok = torch.empty((B, L), dtype=torch.int64, device=dev)
        self.msk = torch.empty((B, L), dtype=torch.bool, device=dev)
        self.giv = torch.empty((B, L), dtype=torch.bool, device=dev)
        self.stp = torch.zeros(B, dtype=torch.int64, device=dev)
        self.nfe = torch.zeros(B, dtype=torch.int64, device=dev)
        self.req = torch.empty(B, dtype=torch.int64, device=dev)  # request id held by each slot
        self.len = torch.full((B,), L, dtype=torch.int64, device=dev)  # real length of each row (right padding)
        self.padded = False  # whether any row admitted so far is shorter than L
        self.order = torch.zeros((B, L), dtype=torch.int64, device=dev) if trace else None
        self.n = 0  # live rows occupy [:n]

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def ids(self) -> torch.Tensor:
        """Request ids of the live rows (n,)."""
        return self.req[: self.n]

    def admit(self, tokens: torch.Tensor, masked: torch.Tensor, given: torch.Tensor, ids: torch.Tensor,
              lengths: torch.Tensor | None = None) -> None:
        """Load rows (k, L) with request ids (k,) behind the live ones; every row must have a masked position.
        ``lengths`` (k,): their real lengths when they are right-padded (the engine must take ``lengths``)."""
        count = int(tokens.shape[0])
        if count <= 0:
            return
        assert count <= self.free, "slot table overflow"
        sl = slice(self.n, self.n + count)
        self.tok[sl] = tokens
        self.msk[sl] = masked
        self.giv[sl] = given
        self.stp[sl] = 0
        self.nfe[sl] = 0
        self.req[sl] = ids
        L = self.tok.shape[1]
        if lengths is None:
            self.len[sl] = L
        else:
            self.len[sl] = lengths
            self.padded = self.padded or bool((lengths < L).any())
        if self.order is not None:
            self.order[sl] = 0
        self.n += count

    def _keep(self, keep: torch.Tensor, t2: torch.Tensor, m2: torch.Tensor, g: torch.Tensor, s2: torch.Tensor,
              nfe2: torch.Tensor, req: torch.Tensor, o2: torch.Tensor | None) -> None:
        """Compact the rows ``keep`` of the given state into [:k] (right-hand sides are gathered copies)."""
        k = int(keep.numel())
        self.len[:k] = self.len[: self.n][keep]
        self.tok[:k] = t2[keep]
        self.msk[:k] = m2[keep]
        self.giv[:k] = g[keep]
        self.stp[:k] = s2[keep]
        self.nfe[:k] = nfe2[keep]
        self.req[:k] = req[keep]
        if self.order is not None:
            assert o2 is not None  # both callers pass an order whenever the table traces
            self.order[:k] = o2[keep]
        self.n = k

    def drop(self, ids: torch.Tensor) -> int:
        """Remove the live rows whose request id is in ``ids``; returns how many were removed."""
        n = self.n
        if n == 0 or ids.numel() == 0:
            return 0
        gone = torch.isin(self.req[:n], ids.to(self.device))
        k = int(gone.sum())
        if k:
            o = None if self.order is None else self.order[:n]
            self._keep((~gone).nonzero().squeeze(1), self.tok[:n], self.msk[:n], self.giv[:n], self.stp[:n],
                       self.nfe[:n], self.req[:n], o)
        return k

    def clear(self) -> torch.Tensor:
        """Empty the table; returns the request ids it held."""
        ids = self.req[: self.n].clone()
        self.n = 0
        return ids

    def step(self, engine: Any, strategy: Strategy, generator: torch.Generator, *, mask_id: int, steps: int,
             vocab_size: int | None = None, validate: bool = True) -> Finished | None:
        """One engine call and one strategy step on the live rows; returns the rows that finished (or None).

        Errors name request ids. On an error the table is unchanged (the step's results are not written).
        """
        n = self.n
        if n == 0:
            return None
        order = self.order
        t, g, req = self.tok[:n], self.giv[:n], self.req[:n]
        t2, m2, s2, nfe2, o2, left = run_step(
            engine, strategy, t, self.msk[:n], g, self.stp[:n], self.nfe[:n], None if order is None else order[:n],
            steps=steps, mask_id=mask_id, generator=generator, vocab_size=vocab_size, validate=validate,
            row_ids=req, lengths=self.len[:n] if self.padded else None,
        )
        k = int(left.sum())
        if k == n:  # nobody finished: update in place
            self.tok[:n] = t2
            self.msk[:n] = m2
            self.nfe[:n] = nfe2
            self.stp[:n] = s2
            if order is not None:
                assert o2 is not None  # run_step traces when given an order
                order[:n] = o2
            return None
        done = ~left
        fin = Finished(req[done], t2[done], nfe2[done], None if o2 is None else o2[done])
        self._keep(left.nonzero().squeeze(1), t2, m2, g, s2, nfe2, req, o2)
        return fin


def decode_many(
    engine: Any,
    inputs: torch.Tensor,
    given: torch.Tensor,
    strategy: Strategy,
    *,
    mask_id: int,
    generator: torch.Generator,
    batch_size: int,
    trace: bool = False,
    progress: bool = False,
    desc: str = "decode",
    vocab_size: int | None = None,
    validate: bool = True,
    lengths: torch.Tensor | None = None,
    on_finish: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> DecodeResult:
    """Decode the N requests ``inputs`` (N, L) with a slot table of ``batch_size`` rows (continuous batching).

    ``given`` (N, L) marks prompt positions, never changed. Results come back in request order: tokens (N, L),
    NFE per request (N,), and with ``trace`` the NFE index at which each position was committed (0 = given).
    ``batch_size`` is capped by the engine's ``max_batch`` (a TensorRT profile's largest batch), if it has one.
    State lives on the engine's device (``engine.device``, when it is a torch device), results on the inputs'.
    ``vocab_size``, ``validate`` and ``lengths`` (right-padded rows) are as in
    :func:`unmask.core.decoding.loop.decode` (errors name request ids). ``on_finish(ids, tokens, nfe)``, if given,
    hears of every request once, as soon as it is final (request ids (F,), tokens (F, L) and NFE (F,) on the inputs'
    device): rows with nothing to decode before the first pass, the others as they finish, so a caller can keep
    each answer the moment it exists.
    """
    from tqdm.auto import tqdm

    steps = check_strategy(strategy)
    vocab_size = engine_vocab(engine, vocab_size)
    _check_inputs(inputs, given, mask_id, vocab_size)
    lengths = check_lengths(engine, lengths, inputs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    max_batch = getattr(engine, "max_batch", None)
    if isinstance(max_batch, int) and max_batch > 0:
        batch_size = min(batch_size, max_batch)
    out_dev = inputs.device
    dev = _device_of(engine, out_dev)
    N, L = inputs.shape
    src_tok = inputs.to(dev)
    src_given = given.to(dev)
    src_masked = (src_tok == mask_id) & ~src_given  # (N, L)
    src_len = None if lengths is None else lengths.to(dev)
    res_tok = src_tok.clone()  # rows with nothing to decode are already final
    res_nfe = torch.zeros(N, dtype=torch.int64, device=dev)
    res_order = torch.zeros_like(src_tok) if trace else None
    queue = src_masked.any(dim=1).nonzero().squeeze(1)  # (Q,) request ids to decode, in order
    Q = int(queue.numel())

    table = SlotTable(max(1, min(batch_size, Q)), L, device=dev, trace=trace)
    B = table.capacity
    head = 0  # next queue entry to load

    def load(count: int) -> None:
        nonlocal head
        if count <= 0:
            return
        ids = queue[head : head + count]
        table.admit(src_tok[ids], src_masked[ids], src_given[ids], ids,
                    None if src_len is None else src_len[ids])
        head += count

    if on_finish is not None and Q < N:
        ready = (~src_masked.any(dim=1)).nonzero().squeeze(1)
        on_finish(ready.to(out_dev), res_tok[ready].to(out_dev), res_nfe[ready].to(out_dev))
    load(min(B, Q))
    # Hard cap on passes (host-side, never skipped): a request takes at most `steps` passes, every pass serves
    # B rows while the queue lasts, and the tail after it drains takes at most `steps` more.
    max_passes = -(-Q * steps // B) + steps
    passes = 0
    with tqdm(total=N, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        bar.update(N - Q)
        while table.n > 0:
            passes += 1
            if passes > max_passes:
                raise pass_cap_error(strategy, steps)
            fin = table.step(engine, strategy, generator, mask_id=mask_id, steps=steps, vocab_size=vocab_size,
                             validate=validate)
            if fin is None:
                continue
            res_tok[fin.ids] = fin.tokens
            res_nfe[fin.ids] = fin.nfe
            if res_order is not None:
                assert fin.order is not None  # the table traces when results are traced
                res_order[fin.ids] = fin.order
            load(min(table.free, Q - head))  # refill the finished rows' slots at once
            bar.update(int(fin.ids.numel()))
            if on_finish is not None:
                on_finish(fin.ids.to(out_dev), fin.tokens.to(out_dev), fin.nfe.to(out_dev))
    assert head == Q, "scheduler left requests in the queue"
    return DecodeResult(
        res_tok.to(out_dev), res_nfe.to(out_dev), None if res_order is None else res_order.to(out_dev)
    )


__all__ = ["Finished", "SlotTable", "decode_many"]
