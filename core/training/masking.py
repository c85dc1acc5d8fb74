"""Masking processes of the MDM objective: which positions each training example hides.

``random`` is the paper's forward process (Kim et al. 2025, Sec. 2): t ~ U(0, 1), every non-given position masked
independently with probability p_mask = (1 - eps) t + eps.

``progressive`` is progressive unmasking (PUMA; Kim, Geuter, Alvarez-Melis, Kakade, Chen 2026, see
../shared/PUMA.md): a pool of slots kept across optimizer steps, each slot one example on its way from (almost) all
masked to (almost) all revealed along the order a confidence-ordered decoder would take. Slot state: the clean
example x0, its given positions, the set of positions revealed so far (always with their TRUE values: teacher
forcing, never the model's guess) and a stage s in 0..K-1 owning the revealed fraction [s/K, (s+1)/K) of the slot's
free (non-given) positions. Every training step reuses the loss's logits (no extra forward pass) to move each slot
one stage on, revealing the masked positions the model is most confident about; a slot past stage K-1 is refilled
with a fresh example at stage 0. The pool is part of the resumable training state (``state_dict``).

Both processes return the model's input and the loss weights of the same estimator: the loss is
sum over masked positions of CE / p / (B * L), with p the row's masking probability (random) or its masked fraction
of free positions (progressive), so the two objectives have the same scale and the ELBO weighting.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import torch

from unmask.core.config import Section


class ProgressiveOptions(Section):
    """Options of ``train.masking = "progressive"`` (the ``[train.progressive]`` table)."""

    stages: Annotated[int, msgspec.Meta(ge=2, le=1000)] = 8
    """K: stages of a slot's trajectory; each example is trained on for about K consecutive steps."""
    collapse: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    """Confidence collapse: also reveal every masked position whose top probability is above this (0 = off); the
    stage then follows the revealed fraction."""
    warmup_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Optimizer steps of plain random masking before the pool starts (early confidences are near uniform)."""
    random_fraction: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    """Fraction of every batch drawn fresh and masked at random (the rest comes from the pool)."""
    score: Literal["top_prob", "margin"] = "top_prob"
    """What orders the reveal: max_v p(v) or p(v1) - p(v2)."""


def random_mask(targets: torch.Tensor, given: torch.Tensor, eps: float, generator: torch.Generator,
                low_discrepancy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's forward process: (masked (B, L) bool, p_mask (B,)); given positions are never masked.

    With ``low_discrepancy`` the batch's t are stratified (t_i = (u + i) / B mod 1): same objective, lower-variance
    gradients. Random numbers come from ``generator`` (on the CPU) whatever the device of ``targets``."""
    B, L = targets.shape
    u = torch.rand(B, generator=generator)
    if low_discrepancy:
        u = (u[:1] + torch.arange(B) / B) % 1.0
    p_mask = ((1.0 - eps) * u + eps).to(targets.device)  # (B,)
    noise = torch.rand(B, L, generator=generator).to(targets.device)
    return (noise < p_mask[:, None]) & ~given, p_mask


def reveal_scores(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Confidence per position (B, L) from logits (B, L, V): top probability or top-two margin (higher = surer)."""
    return _confidence(torch.softmax(logits.float(), dim=-1), score)


def _confidence(probs: torch.Tensor, score: str) -> torch.Tensor:
    if score == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    return probs.amax(dim=-1)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each position's rank in its row (S, L), 0 = the highest score."""
    return scores.argsort(dim=1, descending=True).argsort(dim=1)


class ProgressivePool:
    """The slot pool of progressive masking (module docstring): ``size`` slots of length ``seq_len``.

    Use: ``refill`` the slots :meth:`empty` names with fresh examples, train on :meth:`inputs`, then :meth:`advance`
    with the logits of that forward pass. All randomness comes from the generator passed in (on the CPU)."""

    def __init__(self, options: ProgressiveOptions, size: int, seq_len: int) -> None:
        self.o = options
        self.size = size
        self.x0 = torch.zeros(size, seq_len, dtype=torch.int64)  # clean examples
        self.given = torch.zeros(size, seq_len, dtype=torch.bool)
        self.revealed = torch.zeros(size, seq_len, dtype=torch.bool)  # free positions shown with their true value
        self.stage = torch.full((size,), -1, dtype=torch.int64)  # -1: empty slot
        self.started = False  # the first fill spreads the stages over the slots

    # -- state ----------------------------------------------------------------------------------------------------
    def empty(self) -> torch.Tensor:
        """Indices of the slots waiting for a fresh example."""
        return (self.stage < 0).nonzero().flatten()

    @property
    def n_free(self) -> torch.Tensor:
        return (~self.given).sum(dim=1)  # (S,)

    def masked(self) -> torch.Tensor:
        return ~self.given & ~self.revealed  # (S, L)

    def inputs(self, mask_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens with the mask id on hidden positions, masked (S, L), p (S,) the masked fraction of free
        positions)."""
        masked = self.masked()
        p = masked.sum(dim=1).float() / self.n_free.clamp(min=1).float()
        return self.x0.masked_fill(masked, mask_id), masked, p.clamp(min=1e-6)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"x0": self.x0, "given": self.given, "revealed": self.revealed, "stage": self.stage,
                "started": torch.tensor([int(self.started)])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("x0", "given", "revealed", "stage"):
            t = state[key]
            cur = getattr(self, key)
            if t.shape != cur.shape or t.dtype != cur.dtype:
                raise ValueError(f"pool tensor {key!r}: {t.dtype} {tuple(t.shape)}, expected {cur.dtype} "
                                 f"{tuple(cur.shape)}")
            setattr(self, key, t.clone())
        self.started = bool(state["started"].item())

    # -- transitions ----------------------------------------------------------------------------------------------
    def _target(self, stage: torch.Tensor, n_free: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """round(r * n_free) with r ~ U[s/K, (s+1)/K), capped at n_free - 1 (a slot always keeps a masked position)."""
        K = self.o.stages
        r = (stage.float() + torch.rand(stage.shape[0], generator=generator)) / K
        return torch.minimum((r * n_free.float()).round().long(), (n_free - 1).clamp(min=0))

    def refill(self, slots: torch.Tensor, x0: torch.Tensor, given: torch.Tensor, generator: torch.Generator) -> None:
        """Put fresh examples (n, L) into ``slots`` (n,): stage 0 (on the very first fill, stages spread evenly over
        the pool, shuffled), with the target number of random free positions revealed."""
        n = slots.shape[0]
        if n == 0:
            return
        if not self.started:
            stage = torch.arange(n) * self.o.stages // n
            stage = stage[torch.randperm(n, generator=generator)]
            self.started = True
        else:
            stage = torch.zeros(n, dtype=torch.int64)
        self.x0[slots] = x0
        self.given[slots] = given
        n_free = (~given).sum(dim=1)
        k = self._target(stage, n_free, generator)
        noise = torch.rand(given.shape, generator=generator).masked_fill(given, -1.0)  # given positions rank last
        self.revealed[slots] = (_ranks(noise) < k[:, None]) & ~given
        self.stage[slots] = stage

    @torch.no_grad()
    def advance(self, logits: torch.Tensor, generator: torch.Generator) -> None:
        """Move every slot one stage on, revealing (with true values) its most confident masked positions under
        ``logits`` (S, L, V) of the current inputs; slots past the last stage become empty (see :meth:`empty`).

        Each live slot reveals at least one position, so its revealed count rises on every step until it is
        refilled. Cost: a softmax and max (or top-2) over the vocabulary, an argsort over positions and a scatter.
        """
        masked = self.masked()
        n_free = self.n_free
        n_rev = self.revealed.sum(dim=1)
        stage = self.stage + 1
        target = self._target(stage.clamp(max=self.o.stages - 1), n_free, generator)
        probs = torch.softmax(logits.float(), dim=-1)  # (S, L, V)
        conf = _confidence(probs, self.o.score).cpu()  # (S, L)
        if self.o.collapse > 0:
            sure = masked & (probs.amax(dim=-1).cpu() > self.o.collapse)
            target = torch.maximum(target, n_rev + sure.sum(dim=1))
        k = (target - n_rev).clamp(min=1)  # (S,) positions to reveal now
        self.revealed |= masked & (_ranks(conf.masked_fill(~masked, float("-inf"))) < k[:, None])
        n_rev = self.revealed.sum(dim=1)
        if self.o.collapse > 0:  # the stage follows the revealed fraction
            stage = torch.maximum(stage, (n_rev * self.o.stages) // n_free.clamp(min=1))
        done = (stage >= self.o.stages) | (n_rev >= n_free)
        self.stage = torch.where(done, -1, stage)
