"""Refusing sizes that cannot fit before anything is allocated.

An absurd ``train.batch_size`` or ``backbone.d_model`` would otherwise end minutes later in a MemoryError (or the
kernel's OOM killer) deep inside torch. The estimate is deliberately a lower bound that needs nothing model-specific:
the parameters (counted on torch's ``meta`` device, which allocates nothing) with their gradients and Adam moments,
and the logits of one batch with their softmax and gradient. A config whose lower bound already exceeds the
memory available is refused with a one-line error saying what to reduce; one that passes may still be too big.
"""

from __future__ import annotations

import os
from typing import Any

from unmask.core.errors import ConfigError


def available_bytes() -> int | None:
    """Memory available to a new allocation on this machine (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(nbytes: float, what: str, fix: str, available: int | None = None) -> None:
    """ConfigError when ``nbytes`` exceed the memory available (``available``: default this machine's)."""
    avail = available_bytes() if available is None else available
    if avail is not None and nbytes > avail:
        raise ConfigError(f"{what} needs at least {_gib(nbytes)} of memory but {_gib(avail)} is available; {fix}")


def count_parameters_meta(task: Any, backbone: Any, *, causal: bool = False) -> int | None:
    """Parameters of the model ``backbone`` builds for ``task``, built on the meta device (no memory); None if the
    backbone cannot be built there."""
    import torch

    from unmask.core.models import build_model

    try:
        with torch.device("meta"):
            module, _ = build_model(task, backbone, causal=causal)
    except Exception:  # noqa: BLE001 - a backbone that cannot be built on meta: no estimate (the real build reports)
        return None
    return int(sum(p.numel() for p in module.parameters()))


def check_training_fits(task: Any, backbone: Any, batch_size: int, *, causal: bool = False,
                        available: int | None = None) -> None:
    """Refuse a training config whose lower-bound memory (see the module doc) exceeds what is available."""
    params = count_parameters_meta(task, backbone, causal=causal)
    L, V = int(task.seq_len), int(task.vocab_size)
    if params is not None:
        check_fits(16.0 * params, f"backbone with {params:,} parameters (fp32 weights, gradients and Adam state)",
                   "reduce backbone.d_model or backbone.n_layers", available)
        logits = 12.0 * batch_size * L * V  # fp32 logits, softmax and their gradient
        check_fits(16.0 * params + logits, f"train.batch_size = {batch_size:,} (logits of one batch) with this model",
                   "reduce train.batch_size", available)


__all__ = ["available_bytes", "check_fits", "check_training_fits", "count_parameters_meta"]
