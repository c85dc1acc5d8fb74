"""The inputs of an exported engine, checked and completed on the host before a run (onnxruntime and TensorRT).

An exported puzzle model takes ``tokens`` (B, L) only. An exported text model takes ``tokens`` (B, L), ``lengths``
(B,) and ``index`` (B, K), all int64 (the engine contract's optional inputs, :mod:`unmask.core.engine`): the caller
may leave out ``lengths`` (every row fills the width) or ``index`` (logits at every position, K = L); both are then
made here, so the graph always gets its three inputs. Shapes are checked without reading the tensors (no device
sync); values (lengths in 1..L, index in 0..L-1) only for tensors on the CPU, where the check is free and a bad
index would otherwise be an onnxruntime error about a Gather node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unmask.core.errors import InputError


def engine_feeds(tokens: torch.Tensor, extra: dict[str, Any], *, inputs: tuple[str, ...], seq_len: int,
                 dynamic_seq: bool, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``{"tokens": (B, L), ["lengths": (B,), "index": (B, K)]}`` for an engine whose graph takes ``inputs`` after
    the tokens; ``seq_len`` is the longest row (text, ``dynamic_seq``) or the only one (puzzles)."""
    unknown = sorted(set(extra) - set(inputs))
    if unknown:
        raise InputError(f"{what} '{path}' takes no '{unknown[0]}' input (it takes: tokens"
                         f"{''.join(', ' + n for n in inputs)})")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise InputError(f"{what} takes tokens (B, L), got shape {tuple(getattr(tokens, 'shape', ()))}")
    B, L = tokens.shape
    if L != seq_len and not (dynamic_seq and 1 <= L <= seq_len):
        longest = f"up to {seq_len}" if dynamic_seq else f"of {seq_len}"
        raise InputError(f"'{path}' takes sequences {longest} tokens, got {L}")
    feeds = {"tokens": tokens}
    if not inputs:
        return feeds
    dev = tokens.device
    lengths = extra.get("lengths")
    if lengths is None:
        lengths = torch.full((B,), L, dtype=torch.int64, device=dev)
    index = extra.get("index")
    if index is None:
        index = torch.arange(L, dtype=torch.int64, device=dev).expand(B, L)
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (B,) or lengths.dtype != torch.int64:
        raise InputError(f"{what}: lengths must be an int64 tensor of shape ({B},), got "
                         f"{getattr(lengths, 'dtype', type(lengths).__name__)} {tuple(getattr(lengths, 'shape', ()))}")
    if not isinstance(index, torch.Tensor) or index.ndim != 2 or index.shape[0] != B or index.dtype != torch.int64:
        raise InputError(f"{what}: index must be an int64 tensor of shape ({B}, K), got "
                         f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
    if lengths.device.type == "cpu" and lengths.numel() and bool(((lengths < 1) | (lengths > L)).any()):
        raise InputError(f"{what}: lengths must lie in 1..{L} (the width of the tokens)")
    if index.device.type == "cpu" and index.numel() and bool(((index < 0) | (index >= L)).any()):
        raise InputError(f"{what}: index positions must lie in 0..{L - 1}")
    feeds["lengths"] = lengths
    feeds["index"] = index
    return feeds


def out_width(feeds: dict[str, torch.Tensor]) -> int:
    """Positions per row the engine returns logits at: K with an index, else L."""
    return int(feeds["index"].shape[1]) if "index" in feeds else int(feeds["tokens"].shape[1])


__all__ = ["engine_feeds", "out_width"]
