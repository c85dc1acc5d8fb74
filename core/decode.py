"""The decode loop: engine-agnostic, strategy-agnostic, per-row.

Each row has its own step counter and quota; rows that have no masked position left stop being sent to the
engine (per-row finish); the number of forward passes each row took part in (NFE) is counted; given positions
never change. The loop runs on whatever device the inputs are on (CPU or CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unmask.core.errors import InputError, PluginError
from unmask.core.strategy import StepInput, Strategy


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
        logits = engine(tok_a)  # (B_a, L, V)
        if logits.ndim != 3 or logits.shape[:2] != tok_a.shape:
            raise PluginError(f"engine returned logits of shape {tuple(logits.shape)} for tokens {tuple(tok_a.shape)}")
        logits = logits.float().masked_fill(_mask_column(logits, mask_id), float("-inf"))  # (B_a, L, V)
        out = strategy.step(
            StepInput(logits, tok_a, masked_a, given_a, step[active], steps, generator, mask_id)
        )
        commit = out.commit
        if bool((commit & ~masked_a).any()):
            raise PluginError(f"strategy '{name}' committed a position that was not masked")
        n_commit = commit.sum(dim=1)
        if bool((n_commit < 1).any()):
            raise PluginError(f"strategy '{name}' committed nothing for a row; every step must commit >= 1 per row")
        tok_a = torch.where(commit, out.values, tok_a)
        masked_a = masked_a & ~commit
        nfe_a = nfe[active] + 1
        if order is not None:
            order[active] = torch.where(commit, nfe_a[:, None], order[active])
        if out.remask is not None:
            remask = out.remask & ~given_a & ~masked_a
            tok_a = tok_a.masked_fill(remask, mask_id)
            masked_a = masked_a | remask
            if order is not None:
                order[active] = order[active].masked_fill(remask, 0)
        tokens[active] = tok_a
        masked[active] = masked_a
        nfe[active] = nfe_a
        adv = out.advance if out.advance is not None else 1
        step_a = step[active] + adv
        step[active] = step_a
        left = masked_a.any(dim=1)
        if bool((left & (step_a >= steps)).any()):
            raise PluginError(f"strategy '{name}' left masked positions after its last step ({steps})")
        active = active[left]
    return DecodeResult(tokens, nfe, order)


def _mask_column(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    V = logits.shape[-1]
    col = torch.zeros(V, dtype=torch.bool, device=logits.device)
    if 0 <= mask_id < V:
        col[mask_id] = True
    return col
