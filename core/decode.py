"""The decode loop: engine-agnostic, strategy-agnostic, per-row.

Each row has its own step counter and quota; rows that have no masked position left stop being sent to the
engine (per-row finish); the number of forward passes each row took part in (NFE) is counted; given positions
never change. The loop runs on whatever device the inputs are on (CPU or CUDA).

The per-step checks and state update (``engine_logits``, ``apply_step``, ``check_finished``) are shared with the
continuous-batching scheduler in :mod:`unmask.core.schedule`, so both loops enforce the same contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unmask.core.errors import InputError, PluginError
from unmask.core.strategy import StepInput, StepOutput, Strategy


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # (B, L) int64, no mask left
    nfe: torch.Tensor  # (B,) int64 forward passes per row
    order: torch.Tensor | None = None  # (B, L) int64: NFE index (1-based) at which each position was committed; 0 = given


def _check_inputs(inputs: torch.Tensor, given: torch.Tensor, mask_id: int) -> None:
    if inputs.ndim != 2 or inputs.dtype != torch.int64:
        raise InputError(f"decode inputs must be an int64 (B, L) tensor, got {inputs.dtype} {tuple(inputs.shape)}")
    if given.shape != inputs.shape or given.dtype != torch.bool:
        raise InputError(f"'given' must be a bool tensor of shape {tuple(inputs.shape)}, got {given.dtype} {tuple(given.shape)}")
    if bool((given & (inputs == mask_id)).any()):
        raise InputError("a given position holds the mask token; given positions must hold real tokens")


def engine_logits(engine: object, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``engine(tokens)`` checked for shape, as float32 with the mask token's logit at -inf: (B, L, V)."""
    logits = engine(tokens)  # type: ignore[operator]
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise PluginError(f"engine returned logits of shape {tuple(logits.shape)} for tokens {tuple(tokens.shape)}")
    return logits.float().masked_fill(_mask_column(logits, mask_id), float("-inf"))  # (B, L, V)


def apply_step(
    out: StepOutput,
    tokens: torch.Tensor,
    masked: torch.Tensor,
    given: torch.Tensor,
    nfe: torch.Tensor,
    order: torch.Tensor | None,
    *,
    mask_id: int,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check a strategy's output against the contract and apply it: new (tokens, masked, nfe, order).

    Inputs are the rows of this step (B, L) / (B,); nothing is modified in place.
    """
    commit = out.commit
    if bool((commit & ~masked).any()):
        raise PluginError(f"strategy '{name}' committed a position that was not masked")
    n_commit = commit.sum(dim=1)
    if bool((n_commit < 1).any()):
        raise PluginError(f"strategy '{name}' committed nothing for a row; every step must commit >= 1 per row")
    tokens = torch.where(commit, out.values, tokens)
    masked = masked & ~commit
    nfe = nfe + 1
    if order is not None:
        order = torch.where(commit, nfe[:, None], order)
    if out.remask is not None:
        remask = out.remask & ~given & ~masked
        tokens = tokens.masked_fill(remask, mask_id)
        masked = masked | remask
        if order is not None:
            order = order.masked_fill(remask, 0)
    return tokens, masked, nfe, order


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
) -> DecodeResult:
    """Decode every masked position of ``inputs`` (B, L) with ``engine`` and ``strategy``.

    ``given`` (B, L) marks prompt positions that never change. Randomness comes only from ``generator``.
    """
    _check_inputs(inputs, given, mask_id)
    tokens = inputs.clone()
    masked = (tokens == mask_id) & ~given  # (B, L)
    B = tokens.shape[0]
    dev = tokens.device
    step = torch.zeros(B, dtype=torch.int64, device=dev)
    nfe = torch.zeros(B, dtype=torch.int64, device=dev)
    order = torch.zeros_like(tokens) if trace else None
    steps = strategy.steps
    active = masked.any(dim=1).nonzero().squeeze(1)  # (B_a,)
    name = strategy.name or type(strategy).__name__
    while active.numel() > 0:
        tok_a = tokens[active]
        masked_a = masked[active]
        given_a = given[active]
        logits = engine_logits(engine, tok_a, mask_id)  # (B_a, L, V)
        out = strategy.step(
            StepInput(logits, tok_a, masked_a, given_a, step[active], steps, generator, mask_id)
        )
        tok_a, masked_a, nfe_a, order_a = apply_step(
            out, tok_a, masked_a, given_a, nfe[active], None if order is None else order[active],
            mask_id=mask_id, name=name,
        )
        tokens[active] = tok_a
        masked[active] = masked_a
        nfe[active] = nfe_a
        if order is not None:
            order[active] = order_a
        adv = out.advance if out.advance is not None else 1
        step_a = step[active] + adv
        step[active] = step_a
        left = masked_a.any(dim=1)
        check_finished(left, step_a, steps, name)
        active = active[left]
    return DecodeResult(tokens, nfe, order)


def _mask_column(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    V = logits.shape[-1]
    col = torch.zeros(V, dtype=torch.bool, device=logits.device)
    if 0 <= mask_id < V:
        col[mask_id] = True
    return col
