"""PyTorch eager runtime: runs a trained model directory on CPU or CUDA, optionally under bf16 autocast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import torch

from unmask.core.config import Section
from unmask.core.decoding.runtime import require_cuda
from unmask.core.engine import TorchEngine
from unmask.core.models import load_model
from unmask.core.registry import runtimes


class TorchOptions(Section):
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False
    """bf16 autocast: 2-3x faster on CPUs with AMX and on GPUs; logits are returned as float32."""
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """CPU threads for torch (0 = torch's default)."""


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
