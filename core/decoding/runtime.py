"""Opening engines: pick the runtime plugin for a model path and check the requested device exists.

A runtime plugin is a class registered in ``unmask.core.registry.runtimes`` with an ``Options`` Struct, a
``suffixes`` tuple (``"dir"`` for model directories, or file suffixes such as ``".onnx"``) and
``open(path, options) -> Engine``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unmask.core.config import convert
from unmask.core.errors import DeviceError, PluginError
from unmask.core.registry import runtimes


def runtime_for_path(path: str | os.PathLike) -> str:
    """The runtime name that opens ``path`` by default."""
    p = Path(path)
    if not p.exists():
        from unmask.core.errors import CheckpointError

        raise CheckpointError(
            f"model path '{p}' does not exist; pass a model directory, a run directory, .onnx or .plan"
        )
    kind = "dir" if p.is_dir() else p.suffix.lower()
    for name in runtimes.names():
        try:
            plugin = runtimes.get(name)
        except PluginError:
            continue
        if kind in getattr(plugin, "default_for", ()):
            return name
    raise PluginError(
        f"no runtime opens '{p}' (suffix '{kind}'); pass --runtime, one of: {', '.join(runtimes.names())}"
    )


def open_engine(path: str | os.PathLike, runtime: str | None = None, **options: Any) -> Any:
    """An engine for the model at ``path`` using ``runtime`` (default: chosen from the path)."""
    name = runtime or runtime_for_path(path)
    plugin = runtimes.get(name)
    opts = convert({k: v for k, v in options.items() if v is not None}, plugin.Options, f"runtime {name}")
    p = Path(path)
    if not p.exists():
        from unmask.core.errors import CheckpointError

        raise CheckpointError(f"model path '{p}' does not exist")
    kind = "dir" if p.is_dir() else p.suffix.lower()
    accepted = getattr(plugin, "suffixes", ())
    if accepted and kind not in accepted:
        what = "a directory" if kind == "dir" else f"a '{kind}' file"
        raise PluginError(f"runtime '{name}' cannot open {what} ('{p}'); it takes {', '.join(accepted)}")
    return plugin.open(p, opts)


def require_cuda(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(
            f"{what} needs a CUDA GPU, but torch sees none (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'no'}); run on a GPU machine with a CUDA build of torch, or use --device cpu"
        )
