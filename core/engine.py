"""The engine contract: ``logits = engine(tokens)``.

tokens (B, L) int64 -> logits (B, L, V) float, on the engine's device. An engine knows its vocabulary size,
sequence length and batch limits from the artifact it was loaded from (checkpoint config, ONNX metadata, TensorRT
sidecar), never from CLI flags, and carries that artifact's resolved config in ``config``.

Text models need two optional inputs, which an engine lists in ``inputs`` (absent: neither):

- ``lengths`` (B,) int64: each row's real length; rows are right-padded to L and the padding is masked out of
  attention, so a row gives the same logits alone and in any batch;
- ``index`` (B, K) int64: the positions to return logits at, ``logits = engine(tokens, index=...)`` (B, K, V): the
  decode loop asks for the positions a strategy can commit this step only (with a 126k vocabulary, (B, L, V) for a
  whole canvas does not fit), and a backbone applies its output layer there only. Such logits are a fresh tensor
  the loop may write into (it sets the mask token's logit to -inf in place, with no copy of (B, K, V)).

Both are plain tensors, so an exported engine (ONNX, TensorRT) meets the same contract.
"""

from __future__ import annotations

from typing import Any, Protocol, cast, runtime_checkable

import torch

from unmask.core.models import autocast_context


@runtime_checkable
class Engine(Protocol):
    vocab_size: int
    seq_len: int
    max_batch: int | None
    device: torch.device
    config: dict[str, Any]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


ENGINE_INPUTS = ("lengths", "index", "given")  # the optional inputs an engine may list in ``inputs``


class GuidanceEngine:
    """Classifier-free guidance around an engine (LLaDA, Nie et al. 2025, ``generate.py``): each call runs the
    rows twice in one batch, as they are and with every given position masked (the unconditional pass), and
    returns u + (scale + 1) (c - u). Needs the loop's ``given`` (B, L) input; passes ``lengths`` and ``index`` on."""

    def __init__(self, engine: Any, scale: float, mask_id: int) -> None:
        self.engine = engine
        self.scale = float(scale)
        self.mask_id = int(mask_id)
        self.vocab_size = engine.vocab_size
        self.seq_len = engine.seq_len
        self.max_batch = None if getattr(engine, "max_batch", None) is None else max(1, engine.max_batch // 2)
        self.device = engine.device
        self.config = engine.config
        self.inner = tuple(getattr(engine, "inputs", ()))
        self.inputs = (*self.inner, "given")

    def __call__(self, tokens: torch.Tensor, *, given: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        real = given[:, :L]
        if "lengths" in extra:
            real = real & (torch.arange(L, device=tokens.device)[None, :] < extra["lengths"][:, None])
        uncond = tokens.masked_fill(real, self.mask_id)
        both = {k: torch.cat([v, v]) for k, v in extra.items() if k in self.inner}
        logits = self.engine(torch.cat([tokens, uncond]), **both)
        c, u = logits[:B], logits[B:]
        return u + (self.scale + 1.0) * (c - u)


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


class _CachedModule(Protocol):
    """What :meth:`TorchEngine.cached` needs of a causal module (the autoregressive baselines' key/value cache)."""

    def new_cache(self, batch: int, *, device: torch.device) -> Any: ...

    def forward_cached(self, tokens: torch.Tensor, start: int, cache: Any) -> torch.Tensor: ...


# Rows per forward call on a CPU. The default Sudoku model, one thread, Intel Xeon with AMX, ms per row of a 256-row
# batch run whole / in slices of 64, 32, 16 (best of 3 rounds, idle machine): fp32 6.01 / 3.95 / 3.80 / 3.76, bf16
# 2.82 / 2.49 / 2.39 / 2.53; the bigger batch's activations fall out of the caches
CPU_MICRO_BATCH = 32


class TorchEngine:
    """Engine around an ``nn.Module``: tokens (B, L) int64 -> logits (B, L, V) float32."""

    def __init__(self, module: torch.nn.Module, config: dict[str, Any], *, device: str = "cpu", bf16: bool = False,
                 vocab_size: int | None = None, seq_len: int | None = None, compile: bool = False,
                 micro_batch: int | None = None) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.config = config
        self.bf16 = bf16
        # torch.compile with dynamic shapes (the batch changes as rows finish); the module itself stays eager for
        # export and the key/value-cache path
        self.compiled = bool(compile)
        self._forward: Any = torch.compile(self.module, dynamic=True) if compile else self.module
        # rows per forward call (0 = the whole batch; None = CPU_MICRO_BATCH on a CPU, the whole batch on a GPU): a
        # CPU runs a big batch faster in slices that stay in cache
        if micro_batch is None:
            micro_batch = CPU_MICRO_BATCH if self.device.type == "cpu" else 0
        self.micro_batch = int(micro_batch)
        # sizes: given, else the backbone's ModelSpec, else the module's own (a Hugging Face backbone's)
        spec: Any = getattr(module, "spec", None) or module
        self.vocab_size = int(vocab_size if vocab_size is not None else spec.vocab_size)
        self.seq_len = int(seq_len if seq_len is not None else spec.seq_len)
        self.max_batch: int | None = None
        # the optional inputs the module's forward takes (a text backbone: lengths, index); see the module docstring
        self.inputs: tuple[str, ...] = tuple(n for n in getattr(module, "inputs", ()) if n in ENGINE_INPUTS)

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device, non_blocking=True)
        unknown = sorted(set(extra) - set(self.inputs))
        if unknown:
            from unmask.core.errors import InputError

            raise InputError(f"this model takes no '{unknown[0]}' input (it takes: tokens"
                             f"{''.join(', ' + n for n in self.inputs)})")
        extra = {k: v.to(self.device, non_blocking=True) for k, v in extra.items()}
        shorter = "lengths" in self.inputs or self.supports_cache  # padded text rows; a causal model's prefixes
        if tokens.ndim != 2 or tokens.shape[1] > self.seq_len or (tokens.shape[1] != self.seq_len and not shorter):
            from unmask.core.errors import InputError

            raise InputError(f"this model takes rows of {self.seq_len} tokens"
                             f"{' or fewer' if shorter else ''}, got {tuple(tokens.shape)}")
        n = self.micro_batch
        with autocast_context(self.device, self.bf16):
            if 0 < n < tokens.shape[0]:
                return torch.cat([self._forward(tokens[i : i + n], **{k: v[i : i + n] for k, v in extra.items()})
                                  .float() for i in range(0, tokens.shape[0], n)])
            logits = self._forward(tokens, **extra)
        return logits.float()

    @property
    def supports_cache(self) -> bool:
        """Whether :meth:`cached` works: a causal module with a key/value cache (the autoregressive baselines)."""
        return bool(getattr(self.module, "causal", False)) and hasattr(self.module, "forward_cached")

    def new_cache(self, batch: int) -> Any:
        return cast(_CachedModule, self.module).new_cache(batch, device=self.device)

    @torch.inference_mode()
    def cached(self, tokens: torch.Tensor, start: int, cache: Any) -> torch.Tensor:
        """Logits (B, T, V) float32 of positions ``start .. start+T-1`` with the earlier ones in ``cache``."""
        tokens = tokens.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.bf16):
            logits = cast(_CachedModule, self.module).forward_cached(tokens, start, cache)
        return logits.float()
