"""Continuous batching: a fixed slot table refilled from a queue of requests as rows finish.

A masked diffusion model has no KV cache, so a row's state is just its tokens, its masks and its step counter: a
finished row's slot can take the next request at once, at no cost. Each loop iteration makes ONE engine call on
the live slots; the strategy then runs on those rows, each with its own step counter; rows that finish are
written to the result (in request order) and their slots refilled from the queue. When the queue is empty the
batch shrinks to the live rows, so the tail of a run costs only what is left of it.

The live slots always form a prefix ``[:n]`` of preallocated (B, L) tensors, so the engine and the strategy get
contiguous views with no copy; the table is compacted with index ops only on the iterations where rows finish.
Checks and the state update are shared with :func:`unmask.core.decode.decode`.

For deterministic strategies (``strategy.deterministic``: argmax values, no noise, fixed K) every row's result is
identical to decoding it alone, as long as the engine computes each row independently of the others in the
batch (true for the built-in engines up to floating-point summation order, exactly for row-wise functions).
Random strategies draw from ``generator`` batch-wise, so their draws depend on the batch composition.
"""

from __future__ import annotations

from typing import Any

import torch

from unmask.core.decode import DecodeResult, _check_inputs, check_strategy, engine_vocab, pass_cap_error, run_step
from unmask.core.errors import InputError
from unmask.core.strategy import Strategy


def _device_of(engine: Any, fallback: torch.device) -> torch.device:
    dev = getattr(engine, "device", None)
    return dev if isinstance(dev, torch.device) else fallback


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
) -> DecodeResult:
    """Decode the N requests ``inputs`` (N, L) with a slot table of ``batch_size`` rows (continuous batching).

    ``given`` (N, L) marks prompt positions, never changed. Results come back in request order: tokens (N, L),
    NFE per request (N,), and with ``trace`` the NFE index at which each position was committed (0 = given).
    ``batch_size`` is capped by the engine's ``max_batch`` (a TensorRT profile's largest batch), if it has one.
    State lives on the engine's device (``engine.device``, when it is a torch device), results on the inputs'.
    ``vocab_size`` and ``validate`` are as in :func:`unmask.core.decode.decode` (errors name request ids).
    """
    from tqdm.auto import tqdm

    steps = check_strategy(strategy)
    _check_inputs(inputs, given, mask_id)
    vocab_size = engine_vocab(engine, vocab_size)
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
    res_tok = src_tok.clone()  # rows with nothing to decode are already final
    res_nfe = torch.zeros(N, dtype=torch.int64, device=dev)
    res_order = torch.zeros_like(src_tok) if trace else None
    queue = src_masked.any(dim=1).nonzero().squeeze(1)  # (Q,) request ids to decode, in order
    Q = int(queue.numel())

    # The slot table: live rows occupy the prefix [:n].
    B = max(1, min(batch_size, Q))
    tok = torch.empty((B, L), dtype=torch.int64, device=dev)
    msk = torch.empty((B, L), dtype=torch.bool, device=dev)
    giv = torch.empty((B, L), dtype=torch.bool, device=dev)
    stp = torch.zeros(B, dtype=torch.int64, device=dev)
    nfe = torch.zeros(B, dtype=torch.int64, device=dev)
    req = torch.empty(B, dtype=torch.int64, device=dev)  # request id held by each slot
    order = torch.zeros((B, L), dtype=torch.int64, device=dev) if trace else None
    head = 0  # next queue entry to load

    def load(at: int, count: int) -> None:
        nonlocal head
        if count <= 0:
            return
        ids = queue[head : head + count]
        sl = slice(at, at + count)
        tok[sl] = src_tok[ids]
        msk[sl] = src_masked[ids]
        giv[sl] = src_given[ids]
        stp[sl] = 0
        nfe[sl] = 0
        req[sl] = ids
        if order is not None:
            order[sl] = 0
        head += count

    n = min(B, Q)
    load(0, n)
    # Hard cap on passes (host-side, never skipped): a request takes at most `steps` passes, every pass serves
    # B rows while the queue lasts, and the tail after it drains takes at most `steps` more.
    max_passes = -(-Q * steps // B) + steps
    passes = 0
    with tqdm(total=N, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        bar.update(N - Q)
        while n > 0:
            passes += 1
            if passes > max_passes:
                raise pass_cap_error(strategy, steps)
            t, g = tok[:n], giv[:n]
            t2, m2, s2, nfe2, o2, left = run_step(
                engine, strategy, t, msk[:n], g, stp[:n], nfe[:n], None if order is None else order[:n],
                steps=steps, mask_id=mask_id, generator=generator, vocab_size=vocab_size, validate=validate,
                row_ids=req[:n],
            )
            k = int(left.sum())
            if k == n:  # nobody finished: update in place
                tok[:n] = t2
                msk[:n] = m2
                nfe[:n] = nfe2
                stp[:n] = s2
                if order is not None:
                    order[:n] = o2
                continue
            done = ~left
            ids = req[:n][done]
            res_tok[ids] = t2[done]
            res_nfe[ids] = nfe2[done]
            if res_order is not None:
                res_order[ids] = o2[done]  # type: ignore[index]
            # Compact the survivors into [:k] (right-hand sides are gathered copies), then refill behind them.
            keep = left.nonzero().squeeze(1)
            tok[:k] = t2[keep]
            msk[:k] = m2[keep]
            giv[:k] = g[keep]
            stp[:k] = s2[keep]
            nfe[:k] = nfe2[keep]
            req[:k] = req[:n][keep]
            if order is not None:
                order[:k] = o2[keep]  # type: ignore[index]
            fill = min(n - k, Q - head)
            load(k, fill)
            n = k + fill
            bar.update(int(ids.numel()))
    assert head == Q, "scheduler left requests in the queue"
    return DecodeResult(
        res_tok.to(out_dev), res_nfe.to(out_dev), None if res_order is None else res_order.to(out_dev)
    )


__all__ = ["decode_many"]
