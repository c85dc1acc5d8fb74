"""The decode loop: engine-agnostic, strategy-agnostic, per-row.

Each row has its own step counter and quota; rows that have no masked position left stop being sent to the
engine (per-row finish); the number of forward passes each row took part in (NFE) is counted; given positions
never change. The loop runs on whatever device the inputs are on (CPU or CUDA).

One step (engine call, strategy call, checks, state update) is :func:`run_step`, shared with the
continuous-batching scheduler in :mod:`unmask.core.decoding.schedule`, so both loops enforce the same contract.

What is checked, and what it costs (``validate=True``, the default):

- on the host, free (tensor metadata only): the logits' shape and vocabulary size, and the shape, dtype and
  device of everything the strategy returns (no silent broadcast);
- on the device, one fused reduction per step: non-finite logits at masked positions (NaN, +inf, or all -inf; one
  ``amax`` over (B, L, V), cheaper than the strategy's own softmax), commits outside the masked
  positions, rows that commit nothing, committed values that are the mask id or outside the vocabulary,
  ``advance < 1``, and rows left unfinished after their last step. The flags of all of these are stacked into one
  (B, 6) tensor and read back with a single ``bool(...)``: one device->host sync of one byte per step (the loop
  itself syncs once per step anyway to drop finished rows). Only when a flag is set is anything else computed.

``validate=False`` skips the device checks (not the host ones, which cost nothing). What is never skipped is the
hard cap on passes: a row can take at most ``steps`` passes (every valid pass advances its step counter by >= 1,
and no row may outlive its last step), counted on the host, so even a strategy that re-masks what it commits or
never advances ends with a one-line :class:`PluginError` naming it instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unmask.core.engine import ENGINE_INPUTS
from unmask.core.errors import DeviceError, InputError, PluginError, UnmaskError
from unmask.core.strategy import StepInput, StepOutput, Strategy, Window

MAX_STEPS = 1_000_000  # the largest step count a strategy may ask for (as ``StrategyOptions.steps``)


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # (B, L) int64, no mask left
    nfe: torch.Tensor  # (B,) int64 forward passes per row
    # (B, L) int64: NFE index (1-based) at which each position was committed; 0 = given
    order: torch.Tensor | None = None


def _check_inputs(inputs: torch.Tensor, given: torch.Tensor, mask_id: int, vocab_size: int | None = None) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or inputs.dtype != torch.int64:
        raise InputError(f"decode inputs must be an int64 (B, L) tensor, got {getattr(inputs, 'dtype', inputs)!r} "
                         f"{tuple(getattr(inputs, 'shape', ()))}")
    if not isinstance(given, torch.Tensor) or given.shape != inputs.shape or given.dtype != torch.bool:
        raise InputError(
            f"'given' must be a bool tensor of shape {tuple(inputs.shape)}, got {getattr(given, 'dtype', given)!r} "
            f"{tuple(getattr(given, 'shape', ()))}"
        )
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise InputError(f"mask_id must be an integer, got {mask_id!r}")
    if vocab_size is not None:
        if not 0 <= mask_id < vocab_size:
            raise InputError(f"mask_id {mask_id} is outside the model's vocabulary 0..{vocab_size - 1}")
        if inputs.numel() and bool(((inputs < 0) | (inputs >= vocab_size)).any()):
            bad = int(inputs[(inputs < 0) | (inputs >= vocab_size)][0])
            raise InputError(f"decode inputs hold token {bad}, outside the model's vocabulary 0..{vocab_size - 1}")
    if bool((given & (inputs == mask_id)).any()):
        raise InputError("a given position holds the mask token; given positions must hold real tokens")


def strategy_name(strategy: object) -> str:
    """The name errors use for ``strategy``: its registry name, else its class name."""
    return getattr(strategy, "name", "") or type(strategy).__name__


def _origin(strategy: object) -> str:
    """``'name' (package 'pkg')`` for errors about a strategy plugin."""
    from unmask.core.registry import strategies

    name = strategy_name(strategy)
    pkg = strategies.package(name) if getattr(strategy, "name", "") else None
    if pkg is None:
        pkg = (type(strategy).__module__ or "?").split(".")[0]
    return f"'{name}' (package '{pkg}')"


def check_strategy(strategy: object) -> int:
    """``strategy`` must have a ``step`` method (a :class:`Strategy` or a wrapper around one) and a sane step
    count; returns the step count T."""
    if not callable(getattr(strategy, "step", None)):
        raise PluginError(
            f"decoding strategy {strategy!r} is a {type(strategy).__name__} without a step() method; derive it "
            "from unmask.core.strategy.Strategy or ScoreStrategy"
        )
    steps = getattr(strategy, "steps", None)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise PluginError(
            f"strategy '{strategy_name(strategy)}' has steps = {steps!r}; it must be an integer in 1..{MAX_STEPS}"
        )
    return steps


def engine_vocab(engine: object, vocab_size: int | None) -> int | None:
    """The vocabulary size logits must have: ``vocab_size`` if given, else the engine's own, if it says."""
    if vocab_size is None:
        v = getattr(engine, "vocab_size", None)
        vocab_size = v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
    return vocab_size


def engine_logits(engine: object, tokens: torch.Tensor, mask_id: int, vocab_size: int | None = None, *,
                  extra: dict[str, torch.Tensor] | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``engine(tokens, **extra)`` checked for shape (and vocabulary size, when known), as float32 on the tokens'
    device with the mask token's logit at -inf: (B, L, V), or (B, K, V) for an ``index`` (B, K) in ``extra``
    (``shape`` = (B, K)). Host-side checks only (no sync)."""
    try:  # the engine gets copies: one that writes into its inputs cannot change the loop's state (givens)
        mine = tokens.clone()
        logits = engine(mine, **{k: v.clone() for k, v in extra.items()}) if extra else engine(mine)  # type: ignore[operator]
    except UnmaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken engine or model is one line naming it
        raise PluginError(f"engine {type(engine).__name__} failed: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(logits, torch.Tensor):
        raise PluginError(f"engine {type(engine).__name__} returned a {type(logits).__name__}, not a tensor of logits")
    want = tuple(tokens.shape) if shape is None else shape
    if logits.ndim != 3 or tuple(logits.shape[:2]) != want:
        raise PluginError(f"engine returned logits of shape {tuple(logits.shape)} for tokens {tuple(tokens.shape)}"
                          + ("" if shape is None else f" and an index of shape {shape}"))
    if vocab_size is not None and logits.shape[2] != vocab_size:
        raise PluginError(
            f"engine returned logits over {logits.shape[2]} tokens but the model's vocabulary has {vocab_size}; "
            "the model and the task (or its metadata) do not match"
        )
    if not (logits.is_floating_point()):
        raise PluginError(f"engine returned {logits.dtype} logits; logits must be floating point")
    if logits.device != tokens.device:
        logits = logits.to(tokens.device)
    if shape is not None and logits.dtype == torch.float32 and 0 <= mask_id < logits.shape[2]:
        # an index engine's logits are its own fresh tensor (Engine contract): no (B, K, V) copy (inference mode
        # lets a tensor made under it, as TorchEngine's are, be written)
        with torch.inference_mode(logits.is_inference()):
            logits[..., mask_id] = float("-inf")
        return logits
    return logits.float().masked_fill(_mask_column(logits, mask_id), float("-inf"))  # (B, L, V)


def _check_output(out: object, B: int, L: int, device: torch.device, name: str) -> StepOutput:
    """Shape, dtype and device of a strategy's output (host-side, free); no broadcasting is ever accepted."""
    if not isinstance(out, StepOutput):
        raise PluginError(f"strategy '{name}' returned a {type(out).__name__}; step() must return a StepOutput")

    def need(t: object, what: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        if not isinstance(t, torch.Tensor):
            raise PluginError(f"strategy '{name}' returned {what} as a {type(t).__name__}; expected a {dtype} tensor "
                              f"of shape {shape}")
        if tuple(t.shape) != shape or t.dtype != dtype or t.device != device:
            raise PluginError(
                f"strategy '{name}' returned {what} as {t.dtype} {tuple(t.shape)} on {t.device}; expected {dtype} "
                f"{shape} on {device}"
            )

    need(out.commit, "commit", (B, L), torch.bool)
    need(out.values, "values", (B, L), torch.int64)
    if out.remask is not None:
        need(out.remask, "remask", (B, L), torch.bool)
    if out.advance is not None:
        need(out.advance, "advance", (B,), torch.int64)
    return out


_PROBLEMS = (
    (DeviceError, "engine returned non-finite logits (NaN, +inf, or all -inf at a position) for {rows}; the model "
                  "or its runtime is broken (for bf16/fp16 artifacts try fp32)"),
    (PluginError, "strategy '{name}' committed a position that was not masked ({rows})"),
    (PluginError, "strategy '{name}' committed nothing for {rows}; every step must commit >= 1 per row"),
    (PluginError, "strategy '{name}' committed values that are the mask id or outside the vocabulary 0..{vmax} "
                  "({rows})"),
    (PluginError, "strategy '{name}' returned advance < 1 for {rows}; every step must advance a row by >= 1"),
    (PluginError, "strategy '{name}' left masked positions after its last step ({steps}) in {rows}"),
)


def _rows_text(flags: torch.Tensor, row_ids: torch.Tensor | None) -> str:
    idx = flags.nonzero().squeeze(1)
    ids = (row_ids[idx] if row_ids is not None else idx).tolist()
    shown = ", ".join(map(str, ids[:8])) + (f", ... ({len(ids)} rows)" if len(ids) > 8 else "")
    return f"row{'s' if len(ids) > 1 else ''} {shown}"


def engine_inputs(engine: object) -> tuple[str, ...]:
    """The optional inputs ``engine`` takes besides the tokens (``Engine.inputs``): ``"lengths"``, ``"index"``,
    ``"given"``; () for an engine that says nothing."""
    names = getattr(engine, "inputs", ())
    return tuple(n for n in names if n in ENGINE_INPUTS) if isinstance(names, (tuple, list)) else ()


def check_lengths(engine: object, lengths: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor | None:
    """``lengths`` (B,) checked against ``inputs`` (B, L); None when every row fills the whole width."""
    if lengths is None:
        return None
    if lengths.shape != inputs.shape[:1] or lengths.dtype != torch.int64:
        raise InputError(f"lengths must be an int64 tensor of shape ({inputs.shape[0]},), got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    L = inputs.shape[1]
    if bool(((lengths < 1) | (lengths > L)).any()):
        raise InputError(f"lengths must lie in 1..{L} (the width of the inputs)")
    if bool((lengths == L).all()):
        return None
    if "lengths" not in engine_inputs(engine):
        raise InputError(f"engine {type(engine).__name__} takes no padding (no 'lengths' input), so rows of "
                         "different lengths cannot share a batch; decode them one at a time or in equal-length groups")
    return lengths.to(inputs.device)


def _compact(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of ``window`` (B, L) gathered per row: (index (B, K) int64, valid (B, K) bool), K = the most
    any row has (at least 1); padding columns point at position 0 and are not valid."""
    counts = window.sum(dim=1)  # (B,)
    K = max(1, int(counts.max()))  # a sync; the loop syncs every step anyway
    L = window.shape[1]
    pos = torch.arange(L, device=window.device).expand_as(window)
    key = torch.where(window, pos, pos + L)  # window columns first, in position order
    index = key.topk(K, dim=1, largest=False, sorted=True).values  # (B, K)
    valid = index < L
    return torch.where(valid, index, torch.zeros_like(index)), valid


def _scatter(values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, L: int) -> torch.Tensor:
    """(B, K) column values back to (B, L) at ``index`` (invalid columns dropped; elsewhere zero/False)."""
    B = values.shape[0]
    out = torch.zeros((B, L + 1), dtype=values.dtype, device=values.device)
    out.scatter_(1, torch.where(valid, index, torch.full_like(index, L)), values)
    return out[:, :L]


def run_step(
    engine: object,
    strategy: Strategy,
    tokens: torch.Tensor,
    masked: torch.Tensor,
    given: torch.Tensor,
    step: torch.Tensor,
    nfe: torch.Tensor,
    order: torch.Tensor | None,
    *,
    steps: int,
    mask_id: int,
    generator: torch.Generator,
    vocab_size: int | None = None,
    validate: bool = True,
    row_ids: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One engine call and one strategy step on the live rows (B, L): new (tokens, masked, step, nfe, order, left).

    ``left`` (B,) marks rows that still have masks. Nothing is modified in place. ``row_ids`` (B,) are the ids
    errors name (the caller's row or request numbers; default: the position in this batch). ``lengths`` (B,): each
    row's real length (right padding beyond it, given), for engines that take it.

    The strategy's :meth:`~unmask.core.strategy.Strategy.window` plans the step before the engine runs; an engine
    that takes an ``index`` computes logits at the planned candidates only, (B, K, V), and the strategy sees
    those K columns (``StepInput.positions``); its decisions are scattered back to the sequence.
    """
    name = strategy_name(strategy)
    B, L = tokens.shape
    plan: Window | None = None
    planner = getattr(strategy, "window", None)
    per_row = bool(getattr(strategy, "per_row", False))  # decides by request id (MixedStrategies)
    ids = row_ids if row_ids is not None else torch.arange(B, device=tokens.device)
    if callable(planner):
        try:
            plan = planner(masked, given, step, steps, ids=ids) if per_row else planner(masked, given, step, steps)
        except UnmaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's bug, one line naming it
            raise PluginError(f"strategy {_origin(strategy)} failed to plan a step: {type(exc).__name__}: "
                              f"{exc}") from exc
        if not isinstance(plan, Window) or plan.cand.shape != (B, L) or plan.cand.dtype != torch.bool:
            raise PluginError(f"strategy '{name}' window() must return a Window with a (B, L) bool cand; got "
                              f"{type(plan).__name__}")
    takes = engine_inputs(engine)
    index = valid = None
    if plan is not None and "index" in takes:
        index, valid = _compact(plan.cand & masked & ~given)  # (B, K) each
        width = int(lengths.max()) if lengths is not None else L
        extra: dict[str, torch.Tensor] = {"index": index}
        if "lengths" in takes:
            extra["lengths"] = lengths if lengths is not None else torch.full((B,), L, dtype=torch.int64,
                                                                              device=tokens.device)
        if "given" in takes:
            extra["given"] = given[:, :width]
        logits = engine_logits(engine, tokens[:, :width], mask_id, vocab_size, extra=extra,
                               shape=tuple(index.shape))  # (B, K, V)
        x = StepInput(logits, tokens.gather(1, index), masked.gather(1, index) & valid,
                      given.gather(1, index) | ~valid, step, steps, generator, mask_id, window=valid,
                      n_masked=plan.n_masked, left=plan.left, positions=index)
    else:
        extra = {"lengths": lengths} if lengths is not None else {}
        if "given" in takes:
            extra["given"] = given
        logits = engine_logits(engine, tokens, mask_id, vocab_size, extra=extra)  # (B, L, V)
        x = StepInput(logits, tokens, masked, given, step, steps, generator, mask_id,
                      window=None if plan is None else plan.cand, n_masked=None if plan is None else plan.n_masked,
                      left=None if plan is None else plan.left)
    x.tokens, x.masked, x.given = x.tokens.clone(), x.masked.clone(), x.given.clone()  # the strategy's own copies
    x.ids = ids
    try:
        out = strategy.step(x)
    except UnmaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported as one line naming it (free: no sync)
        raise PluginError(f"strategy {_origin(strategy)} failed: {type(exc).__name__}: {exc}") from exc
    out = _check_output(out, B, x.tokens.shape[1], tokens.device, name)
    if index is not None:
        assert valid is not None
        out = StepOutput(
            commit=_scatter(out.commit & valid, index, valid, L),
            values=_scatter(out.values, index, valid, L),
            remask=None if out.remask is None else _scatter(out.remask & valid, index, valid, L),
            advance=out.advance,
        )
    commit = out.commit
    new_tokens = torch.where(commit, out.values, tokens)
    new_masked = masked & ~commit
    new_nfe = nfe + 1
    if order is not None:
        order = torch.where(commit, new_nfe[:, None], order)
    if out.remask is not None:
        remask = out.remask & ~given & ~new_masked
        new_tokens = new_tokens.masked_fill(remask, mask_id)
        new_masked = new_masked | remask
        if order is not None:
            order = order.masked_fill(remask, 0)
    new_step = step + (out.advance if out.advance is not None else 1)
    if plan is not None and plan.block_end is not None:  # an even block finished early hands on its steps
        block_done = ~(new_masked & plan.cand).any(dim=1)
        new_step = torch.where(block_done, torch.maximum(new_step, plan.block_end), new_step)
    left = new_masked.any(dim=1)  # (B,)
    if validate:
        V = logits.shape[2]
        values = out.values
        bad_value = commit & ((values < 0) | (values >= V) | (values == mask_id))
        finite = torch.isfinite(logits.amax(dim=2))  # amax propagates NaN; all -inf stays
        flags = torch.stack(
            [
                (x.masked & ~finite).any(dim=1),
                (commit & ~masked).any(dim=1),
                ~commit.any(dim=1),
                bad_value.any(dim=1),
                (out.advance < 1) if out.advance is not None else torch.zeros_like(left),
                left & (new_step >= steps),
            ],
            dim=1,
        )  # (B, 6)
        if bool(flags.any()):  # the one sync of the checks
            col = int(flags.any(dim=0).nonzero()[0])
            cls, msg = _PROBLEMS[col]
            raise cls(msg.format(name=name, rows=_rows_text(flags[:, col], row_ids), vmax=V - 1, steps=steps))
    return new_tokens, new_masked, new_step, new_nfe, order, left


def pass_cap_error(strategy: Strategy, steps: int) -> PluginError:
    return PluginError(
        f"strategy '{strategy_name(strategy)}' did not finish a row within {steps} passes (its step count); a "
        "strategy must advance every row by >= 1 step per pass and commit everything on its last step"
    )


def check_finished(left: torch.Tensor, step: torch.Tensor, steps: int, name: str) -> None:
    """Rows that still have masks (``left``, (B,)) must have steps left."""
    if bool((left & (step >= steps)).any()):
        raise PluginError(f"strategy '{name}' left masked positions after its last step ({steps})")


def decode(
    engine: object,
    inputs: torch.Tensor,
    given: torch.Tensor,
    strategy: Strategy,
    *,
    mask_id: int,
    generator: torch.Generator,
    trace: bool = False,
    vocab_size: int | None = None,
    validate: bool = True,
    lengths: torch.Tensor | None = None,
    on_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> DecodeResult:
    """Decode every masked position of ``inputs`` (B, L) with ``engine`` and ``strategy``.

    ``given`` (B, L) marks prompt positions that never change. Randomness comes only from ``generator``.
    ``vocab_size``: the size the logits must have (default: ``engine.vocab_size`` when the engine has one).
    ``validate=False`` skips the per-step device checks (see the module docstring for what they cost).
    ``lengths`` (B,): each row's real length when rows are right-padded to L (the padding is given and masked out
    of attention by engines that take ``lengths``); a row decodes as it would alone.
    ``on_step(tokens, masked, nfe)`` is called after every pass with the whole state (B, L), (B, L), (B,) (a live
    view); it must not modify them.
    """
    steps = check_strategy(strategy)
    vocab_size = engine_vocab(engine, vocab_size)
    _check_inputs(inputs, given, mask_id, vocab_size)
    lengths = check_lengths(engine, lengths, inputs)
    tokens = inputs.clone()
    masked = (tokens == mask_id) & ~given  # (B, L)
    B = tokens.shape[0]
    dev = tokens.device
    step = torch.zeros(B, dtype=torch.int64, device=dev)
    nfe = torch.zeros(B, dtype=torch.int64, device=dev)
    order = torch.zeros_like(tokens) if trace else None
    active = masked.any(dim=1).nonzero().squeeze(1)  # (B_a,)
    passes = 0
    while active.numel() > 0:
        passes += 1
        if passes > steps:  # every live row takes part in every pass: the hard cap, counted on the host
            raise pass_cap_error(strategy, steps)
        tok_a, masked_a, step_a, nfe_a, order_a, left = run_step(
            engine, strategy, tokens[active], masked[active], given[active], step[active], nfe[active],
            None if order is None else order[active], steps=steps, mask_id=mask_id, generator=generator,
            vocab_size=vocab_size, validate=validate, row_ids=active,
            lengths=None if lengths is None else lengths[active],
        )
        tokens[active] = tok_a
        masked[active] = masked_a
        nfe[active] = nfe_a
        step[active] = step_a
        if order is not None:
            assert order_a is not None  # run_step traces when given an order
            order[active] = order_a
        active = active[left]
        if on_step is not None:
            on_step(tokens, masked, nfe)
    return DecodeResult(tokens, nfe, order)


def _mask_column(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    V = logits.shape[-1]
    col = torch.zeros(V, dtype=torch.bool, device=logits.device)
    if 0 <= mask_id < V:
        col[mask_id] = True
    return col
