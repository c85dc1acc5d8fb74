"""Masked diffusion (MDM) objective: the ELBO under random masking or progressive unmasking; decodes with strategies.

Kim et al. 2025, Sec. 2 (Sahoo et al. 2024): t ~ U(0, 1), p_mask = (1 - eps) t + eps; every non-given position is
masked independently with p_mask, and the loss is the cross-entropy on masked positions weighted by 1 / p_mask
(the continuous-time ELBO weight), averaged over the batch and sequence length. ``train.masking = "progressive"``
trains instead on the masks confidence-ordered decoding visits (PUMA; :mod:`unmask.core.training.masking`), with
``train.progressive`` options and its slot pool part of the resumable training state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unmask.core.config import convert
from unmask.core.errors import ConfigError
from unmask.core.objective import foreign_decoder
from unmask.core.registry import objectives, strategies
from unmask.core.task import Dataset, Task
from unmask.core.training.masking import ProgressiveOptions, ProgressivePool, random_mask

DEFAULT_DECODERS: list[str | dict[str, Any]] = ["margin", "vanilla"]


def mdm_loss(
    logits_fn: Any, batch_tokens: torch.Tensor, given: torch.Tensor, mask_id: int, eps: float,
    generator: torch.Generator, low_discrepancy: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative ELBO of the masked diffusion model for one batch under random masking (see the module docstring)."""
    masked, p_mask = random_mask(batch_tokens, given, eps, generator, low_discrepancy)
    if "index" in _inputs(logits_fn):
        return sparse_masked_loss(logits_fn, batch_tokens, masked, p_mask, mask_id)
    loss, info, _ = masked_loss(logits_fn, batch_tokens, masked, p_mask, mask_id)
    return loss, info


def _inputs(fn: Any) -> tuple[str, ...]:
    """The optional inputs of a backbone module (through torch.compile's and DDP's wrappers)."""
    for obj in (fn, getattr(fn, "module", None), getattr(fn, "_orig_mod", None)):
        names = getattr(obj, "inputs", None)
        if isinstance(names, tuple):
            return names
    return ()


def sparse_masked_loss(
    logits_fn: Any, targets: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor, mask_id: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`masked_loss` with the output layer applied at the masked positions only (a backbone that takes an
    ``index``, e.g. the ``hf`` one): the same loss, without the (B, L, V) logits of the positions that add nothing
    to it. Rows are padded to the most masked positions of any row; the padding weighs 0."""
    B, L = targets.shape
    x = targets.masked_fill(masked, mask_id)
    counts = masked.sum(dim=1)
    K = max(1, int(counts.max()))
    pos = torch.arange(L, device=targets.device).expand(B, L)
    order = torch.where(masked, pos, pos + L).topk(K, dim=1, largest=False).values  # (B, K) masked first
    valid = order < L
    index = torch.where(valid, order, torch.zeros_like(order))
    logits = logits_fn(x, index=index).float()  # (B, K, V)
    logits[..., mask_id] = float("-inf")
    tgt = targets.gather(1, index)
    ce = F.cross_entropy(logits.reshape(B * K, -1), tgt.reshape(-1), reduction="none").view(B, K)
    loss = (ce * valid / p_mask[:, None]).sum() / (B * L)
    with torch.no_grad():
        acc = ((logits.argmax(-1) == tgt) & valid).sum() / counts.sum().clamp(min=1)
    return loss, {"masked_acc": float(acc), "masked_frac": float(masked.float().mean())}


def masked_loss(
    logits_fn: Any, targets: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor, mask_id: int,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """sum over masked positions of CE / p_mask (per row), divided by B * L; also returns the logits (B, L, V) of
    the one forward pass (progressive masking reuses them to pick its next reveals)."""
    B, L = targets.shape
    x = targets.masked_fill(masked, mask_id)
    logits = logits_fn(x).float()  # (B, L, V)
    logits[..., mask_id] = float("-inf")
    ce = F.cross_entropy(logits.reshape(B * L, -1), targets.reshape(-1), reduction="none").view(B, L)
    loss = (ce * masked / p_mask[:, None]).sum() / (B * L)
    with torch.no_grad():
        n = masked.sum().clamp(min=1)
        acc = ((logits.argmax(-1) == targets) & masked).sum() / n
    return loss, {"masked_acc": float(acc), "masked_frac": float(masked.float().mean())}, logits


@objectives.register("mdm")
class MdmObjective:
    """Masked diffusion: the ELBO under random masking or progressive unmasking; decodes with any strategy."""

    name = "mdm"
    causal = False

    def __init__(self, task: Task, train: Mapping[str, Any]) -> None:
        self.task = task
        self.mask_id = int(task.mask_id)
        self.eps = float(train.get("eps", 1e-3))
        self.low_discrepancy = bool(train.get("low_discrepancy", True))
        self.masking = str(train.get("masking", "random"))
        self.pool: ProgressivePool | None = None
        self.warmup = 0
        if self.masking == "progressive":
            prog = train.get("progressive") or {}
            opts = prog if isinstance(prog, ProgressiveOptions) else convert(dict(prog), ProgressiveOptions,
                                                                             "train.progressive")
            batch = int(train.get("batch_size", 128))
            n_pool = batch - round(opts.random_fraction * batch)
            if n_pool < 1:
                raise ConfigError(f"train.progressive.random_fraction = {opts.random_fraction} leaves no pool slot "
                                  f"in a batch of {batch}; lower it")
            self.pool = ProgressivePool(opts, n_pool, task.seq_len)
            self.warmup = opts.warmup_steps
        elif self.masking != "random":
            raise ConfigError(f"train.masking = '{self.masking}' is unknown; use 'random' or 'progressive'")

    def model_task(self) -> Task:
        return self.task

    def batch(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        assert data.targets is not None, "training needs targets"
        return data.targets, data.given

    def flops_layout(self, module: Any, data: Dataset | None) -> tuple[int, float] | None:
        """What one training example costs the backbone (:mod:`unmask.core.flops`): ``(tokens, output positions)``.
        The model reads the task's sequence; logits are computed everywhere, except for a backbone that takes an
        ``index`` under random masking (:func:`sparse_masked_loss`): there the expected masked positions, E[p_mask]
        = eps + (1 - eps) / 2 of the non-given ones (their share measured on ``data``; None without it).
        Progressive masking computes every position's logits (its next reveals read them)."""
        L = int(self.task.seq_len)
        if self.pool is not None or "index" not in _inputs(module):
            return L, float(L)
        if data is None:
            return None
        answer = 1.0 - float(np.asarray(data.given, dtype=bool).mean())
        return L, L * answer * (self.eps + (1.0 - self.eps) / 2)

    def loss(self, logits_fn: Any, draw: Any, batch_size: int, generator: torch.Generator,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if self.pool is not None and step >= self.warmup:
            return self._progressive_loss(logits_fn, draw, batch_size, generator)
        targets, given = draw(batch_size)
        return mdm_loss(logits_fn, targets, given, self.mask_id, self.eps, generator, self.low_discrepancy)

    def _progressive_loss(self, logits_fn: Any, draw: Any, batch_size: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on a batch of pool slots (plus the random-masking fraction), then every slot moves one stage on
        using the same forward pass's logits (unmask.core.training.masking)."""
        pool = self.pool
        assert pool is not None
        empty = pool.empty()
        if empty.numel():
            t, g = draw(empty.numel())
            pool.refill(empty, t.cpu(), g.cpu(), generator)
        _, masked, p = pool.inputs(self.mask_id)
        targets = pool.x0
        n_rand = batch_size - pool.size
        if n_rand:
            t, g = (x.cpu() for x in draw(n_rand))
            m_r, p_r = random_mask(t, g, self.eps, generator, self.low_discrepancy)
            targets, masked, p = torch.cat([t, targets]), torch.cat([m_r, masked]), torch.cat([p_r, p])
        dev = _device_of(logits_fn)
        loss, info, logits = masked_loss(logits_fn, targets.to(dev), masked.to(dev), p.to(dev), self.mask_id)
        pool.advance(logits[n_rand:].detach(), generator)
        return loss, info

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.pool.state_dict() if self.pool is not None else {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.pool is not None:
            self.pool.load_state_dict(tensors)

    def default_decoders(self) -> list[str | dict[str, Any]]:
        return list(DEFAULT_DECODERS)

    def decoders(self, sections: list[dict[str, Any]], *, steps: int | None = None,
                 where: str = "--strategies") -> list[Any]:
        """Decode-loop strategies built from ``sections`` (``steps`` fills a section's missing ``steps``)."""
        from unmask.core.strategy import build_strategy

        out = []
        for s in sections:
            name = str(s.get("name", ""))
            if name not in strategies:
                err = foreign_decoder(name, self.name, "a strategy: " + ", ".join(strategies.names()))
                if err is not None:
                    raise err
            out.append(build_strategy(s, where, steps=steps))
        return out


def _device_of(logits_fn: Any) -> torch.device:
    """Where the model behind ``logits_fn`` (a module, or its DDP / compiled wrapper) keeps its weights."""
    try:
        return next(logits_fn.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
