"""The engine contract: ``logits = engine(tokens)``.

tokens (B, L) int64 -> logits (B, L, V) float, on the engine's device. An engine knows its vocabulary size,
sequence length and batch limits from the artifact it was loaded from (checkpoint config, ONNX metadata, TensorRT
sidecar), never from CLI flags, and carries that artifact's resolved config in ``config``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Engine(Protocol):
    vocab_size: int
    seq_len: int
    max_batch: int | None
    device: torch.device
    config: dict[str, Any]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


class FunctionEngine:
    """An engine around any callable (tests, oracles, fake models)."""

    def __init__(
        self,
        fn: Any,
        vocab_size: int,
        seq_len: int,
        *,
        device: str | torch.device = "cpu",
        max_batch: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.fn = fn
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.config = config or {}
        self.calls = 0
        self.rows = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += int(tokens.shape[0])
        return self.fn(tokens)
