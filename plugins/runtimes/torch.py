"""PyTorch eager runtime: runs a trained model directory on CPU or CUDA, optionally under bf16 autocast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, cast

import msgspec
import torch

from unmask.core.config import Section
from unmask.core.models import autocast_context, load_model
from unmask.core.registry import runtimes
from unmask.core.runtime import require_cuda


class TorchOptions(Section):
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False
    """bf16 autocast: 2-3x faster on CPUs with AMX and on GPUs; logits are returned as float32."""
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """CPU threads for torch (0 = torch's default)."""


class _CachedModule(Protocol):
    """What :meth:`TorchEngine.cached` needs of a causal module (the autoregressive baselines' key/value cache)."""

    def new_cache(self, batch: int, *, device: torch.device) -> Any: ...

    def forward_cached(self, tokens: torch.Tensor, start: int, cache: Any) -> torch.Tensor: ...


class TorchEngine:
    """Engine around an ``nn.Module``: tokens (B, L) int64 -> logits (B, L, V) float32."""

    def __init__(self, module: torch.nn.Module, config: dict[str, Any], *, device: str = "cpu", bf16: bool = False,
                 vocab_size: int | None = None, seq_len: int | None = None) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.config = config
        self.bf16 = bf16
        spec: Any = getattr(module, "spec", None)  # the backbone's ModelSpec, if it keeps one
        self.vocab_size = int(vocab_size if vocab_size is not None else spec.vocab_size)
        self.seq_len = int(seq_len if seq_len is not None else spec.seq_len)
        self.max_batch: int | None = None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device, non_blocking=True)
        with autocast_context(self.device, self.bf16):
            logits = self.module(tokens)
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


@runtimes.register("torch")
class TorchRuntime:
    """PyTorch eager on CPU or CUDA (model directories), optional bf16 autocast."""

    Options = TorchOptions
    name = "torch"
    suffixes = ("dir",)
    default_for = ("dir",)

    @staticmethod
    def open(path: Path, options: TorchOptions) -> TorchEngine:
        if options.device == "cuda":
            require_cuda("--runtime torch --device cuda")
        if options.threads:
            torch.set_num_threads(options.threads)
        task, module, config = load_model(path)
        return TorchEngine(module, config, device=options.device, bf16=options.bf16)
