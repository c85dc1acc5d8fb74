"""Vanilla MDM sampling: every masked position is revealed independently with probability 1 - s/t."""

from __future__ import annotations

from typing import Literal

import torch

from unmask.core.registry import strategies
from unmask.core.strategy import StepInput, StepOutput, Strategy, StrategyOptions


class VanillaOptions(StrategyOptions):
    """Vanilla's K is random by definition; ``k_rule`` is ignored."""

    value: Literal["argmax", "sample"] = "sample"
    """The ancestral sampler draws values from p_i (PAPER.md); "argmax" is the reference code's variant."""


@strategies.register("vanilla")
class Vanilla(Strategy):
    """Random order: each masked position revealed w.p. (alpha_s - alpha_t) / (1 - alpha_t) = 1 - s/t per step.

    The reverse process of Kim et al. 2025 (Sec. 2) with the linear schedule on T uniform steps. Steps at which a
    row would reveal nothing leave its tokens, hence its logits, unchanged, so they are skipped exactly instead of
    spending a forward pass (as in the "first-hitting" sampler, Zheng et al. 2024): the number of skipped steps is
    drawn from its exact law, then K ~ Binomial(|M|, 1/r) conditioned on K >= 1, with r the remaining steps.
    Decisions are identically distributed to the step-by-step sampler; NFE <= T.
    """

    Options = VanillaOptions
    name = "vanilla"

    def ineffective_options(self) -> list[str]:
        out = super().ineffective_options()
        if self.options.k_rule != "deterministic":
            out.append(f"k_rule={self.options.k_rule} has no effect on vanilla (its K is random by definition)")
        if self.options.noise != "none":
            out.append(f"noise={self.options.noise} has no effect on vanilla (it ranks nothing)")
        return out

    def step(self, x: StepInput) -> StepOutput:
        cand = self.candidates(x)
        n = cand.sum(dim=1)  # (B,)
        nf = n.to(torch.float64)
        r = self.steps_left(x).to(torch.float64).clamp(min=1.0)  # remaining steps (B,) (of the block: even blocks)
        B, L = cand.shape
        u = self.rand(x, (B, 3 + L)).to(torch.float64)
        # Skip m steps with no reveal: P(no reveal in the next m steps) = ((r - m) / r)^n.
        m = torch.floor(r * (1.0 - u[:, 0].clamp(min=1e-300) ** (1.0 / nf.clamp(min=1.0))))
        m = torch.minimum(m, r - 1.0).clamp(min=0.0)
        if x.positions is not None and x.n_masked is not None:  # only this step's window in view (blocks) and
            # masks outside it: never skip onto the row's last step, which would have to commit them too
            m = torch.where(x.n_masked > n, torch.minimum(m, r - 2.0), m).clamp(min=0.0)
        r2 = r - m  # remaining steps at the step that reveals
        p = 1.0 / r2
        # K ~ Binomial(n, p) | K >= 1: the first success index I has P(I <= i) = (1-(1-p)^i) / (1-(1-p)^n); then
        # K = 1 + Binomial(n - I, p).
        q = 1.0 - p
        total = 1.0 - q**nf
        first = torch.ceil(torch.log1p(-u[:, 1] * total) / torch.log(q.clamp(min=1e-300)).clamp(max=-1e-300))
        first = torch.where(p >= 1.0, torch.ones_like(first), first.clamp(1.0, None))
        first = torch.minimum(first, nf)
        rest = (nf - first).clamp(min=0.0)
        extra = torch.binomial(rest.to(x.generator.device), p.to(x.generator.device), generator=x.generator)
        k = (1.0 + extra.to(rest.device)).to(torch.int64)
        last = r2 <= 1.0  # the row's (or its block's) last step: everything left is committed
        cand = torch.where(last[:, None], x.masked & ~x.given, cand)
        k = torch.where(last, cand.sum(dim=1), torch.minimum(k, n))
        # A uniformly random subset of size k: rank positions by uniform noise.
        scores = u[:, 3:].to(torch.float32)
        commit = self.top_k(scores, cand, k)
        return StepOutput(commit=commit, values=self.choose_values(x), advance=(m + 1.0).to(torch.int64))
