"""Training FLOPs: what one training step costs, counted from the model and the objective's sequence layout.

Conventions (Kaplan et al. 2020, "Scaling laws for neural language models", Sec. 2.1; Hoffmann et al. 2022, App. F):

* a multiply-accumulate (MAC) is 2 FLOPs; only matrix products are counted (embedding lookups, norms, softmax,
  activations, residual adds and the optimizer are left out: together a few percent of a step);
* a training step costs 3 forward passes (the backward pass computes the gradients of activations and of weights,
  2 x the forward's MACs): :data:`TRAIN_FACTOR`;
* attention counts ``Q K^T`` and ``A V`` in full, 2 x 2 x L^2 x d FLOPs per layer and sequence, causal or not (what
  the dense kernels compute; a causal kernel that skips the masked half does less).

What a backbone computes it says itself through a hook on its module, ``forward_flops(seq_len, outputs=None)``: the
FLOPs of one forward pass over one sequence of ``seq_len`` tokens with the output layer applied at ``outputs``
positions (None: all of them). The ``transformer`` backbone counts its layers exactly (``repeats`` included: a
weight-shared stack costs every application); a module without the hook gets :func:`generic_forward_flops`, the
standard estimate 2 x parameters x tokens plus attention. What the model reads per training example the objective
says through ``flops_layout(module, data)`` -> ``(tokens, output positions)`` (an ARM reads its ``3 L`` sequence
minus the last token; an MDM with a sparse output layer computes logits at the masked positions only); an objective
without it is taken to read its model task's ``seq_len`` tokens with logits everywhere.

Validation and checkpointing are not training FLOPs and are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from unmask.core.errors import InputError

TRAIN_FACTOR = 3
"""A training step = forward + backward = 3 forward passes (the backward pass is 2x the forward's MACs)."""


def _unwrap(module: Any) -> Any:
    """The module behind torch.compile's and DDP's wrappers."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return module


def attention_shape(module: nn.Module) -> tuple[int, int]:
    """(width d, attention layers) of a module that does not count itself: its ``nn.MultiheadAttention`` layers, else
    a Hugging Face style ``config`` (``hidden_size``, ``num_hidden_layers``) on it or on ``module.model``; (0, 0)
    when neither is there (attention is then not counted)."""
    mha = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]
    if mha:
        return int(mha[0].embed_dim), len(mha)
    for obj in (module, getattr(module, "model", None)):
        cfg = getattr(obj, "config", None)
        d = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
        if isinstance(d, int) and isinstance(n, int):
            return d, n
    return 0, 0


def matmul_parameters(module: nn.Module) -> int:
    """Parameters that multiply activations: all but those only looked up (``nn.Embedding`` tables that are not
    also the weight of an ``nn.Linear``, i.e. not tied to an output layer)."""
    linear = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    lookup = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in lookup or id(p) in linear)


def generic_forward_flops(module: nn.Module, seq_len: int, outputs: float | None = None) -> float:
    """The standard estimate for a backbone without a ``forward_flops`` hook: 2 x (parameters that multiply
    activations) x tokens, plus attention's 2 x 2 x L^2 x d per layer (:func:`attention_shape`). ``outputs`` is
    ignored: which parameters form the output layer is not known here, so it is counted at every position."""
    d, layers = attention_shape(module)
    return 2.0 * (matmul_parameters(module) * seq_len + 2 * seq_len**2 * d * layers)


def forward_flops(module: nn.Module, seq_len: int, outputs: float | None = None) -> float:
    """FLOPs of one forward pass over one sequence of ``seq_len`` tokens, logits at ``outputs`` positions (None:
    every position): the module's ``forward_flops`` hook, else :func:`generic_forward_flops`."""
    m = _unwrap(module)
    hook = getattr(m, "forward_flops", None)
    if callable(hook):
        return float(hook(seq_len, outputs))
    return generic_forward_flops(m, seq_len, outputs)


def sample_flops(module: nn.Module, objective: Any, data: Any = None) -> float | None:
    """Training FLOPs of one example (:data:`TRAIN_FACTOR` x one forward pass in the objective's layout); None when
    the layout needs the training data (``data``, a :class:`~unmask.core.task.Dataset`) and none is given."""
    layout_fn = getattr(objective, "flops_layout", None)
    if callable(layout_fn):
        layout = layout_fn(_unwrap(module), data)
        if layout is None:
            return None
        tokens, outputs = layout
    else:
        tokens, outputs = int(objective.model_task().seq_len), None
    return TRAIN_FACTOR * forward_flops(module, int(tokens), outputs)


def step_flops(module: nn.Module, objective: Any, batch_size: int, data: Any = None) -> float | None:
    """Training FLOPs of one optimizer step on ``batch_size`` examples (per process)."""
    per = sample_flops(module, objective, data)
    return None if per is None else batch_size * per


# -- from a recorded config (runs logged before training FLOPs were) ------------------------------------------------
def config_sample_flops(config: Mapping[str, Any]) -> float:
    """Training FLOPs per example of the model a resolved config (a checkpoint's, or a metrics ``start`` event's)
    describes (the model is built to be measured). InputError when they cannot be known from the config."""
    from unmask.core.models import build_model
    from unmask.core.objective import build_objective
    from unmask.core.task import build_task

    try:
        task = build_task(config["task"], "task")
        objective = build_objective(task, config.get("train") or {})
        module, _ = build_model(objective.model_task(), config["backbone"], causal=objective.causal)
    except KeyError as exc:
        raise InputError(f"the config has no {exc.args[0]!r} section") from None
    per = sample_flops(module, objective)
    if per is None:
        raise InputError("its FLOPs per example depend on the training data (a backbone with a sparse output "
                         "layer counts the masked positions), which the config does not record")
    return per


def config_train_flops(config: Mapping[str, Any], samples: int, *, _depth: int = 0) -> float:
    """Training FLOPs of ``samples`` examples seen by the model of ``config`` (a resolved config as recorded),
    warm starts included: the samples a ``train.init_from`` source had seen count at the source's own cost (its
    recorded ``train_flops``, else derived from its config the same way, while its directory still holds that
    model). InputError saying why when they cannot be known."""
    per = config_sample_flops(config)
    init = config.get("init_from")
    if not isinstance(init, Mapping) or not int(init.get("samples") or 0):
        return samples * per
    inherited = int(init["samples"])
    src = Path(str(init.get("path", "")))
    from unmask.core.training import checkpoint as ckpt

    try:
        src_cfg = ckpt.read_config(src)
    except Exception:  # noqa: BLE001 - any unreadable source: the reason below
        src_cfg = None
    if src_cfg is None or int(src_cfg.get("samples") or 0) != inherited or _depth > 32:
        raise InputError(f"it was warm-started from '{src}' after {inherited:,} samples, and the training FLOPs of "
                         "those are not recorded (that directory no longer holds that model)")
    if src_cfg.get("train_flops") is not None:
        before = float(src_cfg["train_flops"])
    else:
        before = config_train_flops(src_cfg, inherited, _depth=_depth + 1)
    return before + (samples - inherited) * per


def format_flops(x: float) -> str:
    """``1.23e15``-style text of a FLOP count."""
    if not math.isfinite(x) or x <= 0:
        return f"{x:g}"
    return f"{x:.3g}".replace("e+", "e")


__all__ = ["TRAIN_FACTOR", "attention_shape", "config_sample_flops", "config_train_flops", "format_flops",
           "forward_flops", "generic_forward_flops", "matmul_parameters", "sample_flops", "step_flops"]
