"""PyTorch eager runtime: runs a trained model directory on CPU or CUDA, optionally under bf16 autocast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import torch

from unmask.core.config import Section
from unmask.core.decoding.runtime import require_cuda
from unmask.core.engine import TorchEngine
from unmask.core.errors import DeviceError
from unmask.core.models import load_model
from unmask.core.registry import runtimes


class TorchOptions(Section):
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False
    """bf16 autocast: 2-3x faster on CPUs with AMX and on GPUs; logits are returned as float32."""
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """CPU threads for torch (0 = torch's default)."""
    compile: bool = False
    """torch.compile the forward (dynamic batch); compiled when the engine opens (seconds to tens of seconds)."""
    model: list[str] = msgspec.field(default_factory=list)
    """``section.key=value`` settings of a Hugging Face model directory's config before it is built, e.g.
    ``backbone.trust_remote_code=true``, ``backbone.shift=1``, ``task.mask_id=126336``, ``task.chat=true``."""
    micro_batch: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Rows per forward call: a bigger batch runs in slices of this many (0 = whole batch; default: 32 on a CPU,
    where slices stay in cache, the whole batch on CUDA). Same logits either way; see bench/decode.py's profile."""


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
        task, module, config = load_model(path, overrides=options.model or None)
        engine = TorchEngine(module, config, device=options.device, bf16=options.bf16, compile=options.compile,
                             micro_batch=options.micro_batch)
        if options.compile:
            warm_up(engine, path)
        return engine


def warm_up(engine: TorchEngine, path: Path) -> None:
    """Compile now, on batches of 2 and 1 rows of token 0, so that a failure is reported at open and not in the
    middle of work (torch specialises a dimension of size 1: one graph for a single row, one for any other size)."""
    try:
        for rows in (2, 1):
            engine(torch.zeros(rows, engine.seq_len, dtype=torch.long))
    except Exception as exc:  # noqa: BLE001 - any compiler failure (no C++ compiler, unsupported op) is one line
        raise DeviceError(f"torch.compile of '{path}' failed ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); open it without --compile") from exc
