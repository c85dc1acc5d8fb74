"""Fake engines for tests (importable as `fakes`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import torch


def context_engine(vocab_out: int, seq_len: int, seed: int = 0, sharp: float = 3.0):
    """A deterministic fake model whose logits depend on every token of the row (a tiny random linear mixer)."""
    from unmask.core.engine import FunctionEngine

    g = torch.Generator().manual_seed(seed)
    vin = vocab_out + 1
    emb = torch.randn(vin, 8, generator=g)
    mix = torch.randn(seq_len, seq_len, generator=g) / seq_len**0.5
    out = torch.randn(8, vocab_out, generator=g) * sharp
    bias = torch.randn(seq_len, vocab_out, generator=g)

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        h = emb.to(tokens.device)[tokens]  # (B, L, 8)
        h = torch.einsum("ij,bjd->bid", mix[:L, :L].to(tokens.device), h)
        logits = torch.tanh(h) @ out.to(tokens.device) + bias[:L].to(tokens.device)  # (B, L, V)
        pad = torch.zeros(*logits.shape[:2], 1, device=tokens.device)  # the mask token's column
        return torch.cat([logits, pad], dim=-1)

    return FunctionEngine(fn, vocab_out + 1, seq_len)
