"""Factor rule (parallel): rank r (0-based, by score) commits if its score >= 1 - f / (r + 1), at least one."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import torch

from unmask.core.registry import strategies
from unmask.core.strategy import NEG_INF, ParallelOptions, StepInput, StepOutput, Strategy, top_two


class FactorOptions(ParallelOptions):
    f: Annotated[float, msgspec.Meta(ge=0.0, le=1_000.0)] = 1.0
    """The factor: larger commits more per step (rank 0 always passes when f >= 1)."""
    score: Literal["top_prob", "margin"] = "top_prob"
    """Score ranked and thresholded: max_v p_i(v), or the top-two margin p_i(v1) - p_i(v2)."""


@strategies.register("factor")
class Factor(Strategy):
    """Parallel decoding: sort candidates by score s_(0) >= s_(1) >= ...; rank r commits if s_(r) >= 1 - f/(r+1).

    The factor-based rule of Fast-dLLM (Wu et al. 2025): the more positions are committed at once, the more
    confident each must be, because the product of marginals approximates the joint less well. Scores fall and
    thresholds rise with r, so the accepted ranks are a prefix. At least one per row; a row's last step commits
    every candidate (NFE <= steps). Noise, if set, perturbs the scores before the rule. Respects ``block_size``.
    """

    Options = FactorOptions
    name = "factor"

    def step(self, x: StepInput) -> StepOutput:
        probs = torch.softmax(x.logits.float(), dim=-1)  # (B, L, V)
        if self.options.score == "margin":
            p1, p2 = top_two(probs)
            score = p1 - p2
        else:
            score = probs.amax(dim=-1)  # (B, L)
        score = self.add_noise(x, score)
        cand = self.candidates(x)
        n_cand = cand.sum(dim=1)  # (B,)
        s_sorted = torch.sort(score.masked_fill(~cand, NEG_INF), dim=1, descending=True, stable=True).values
        L = score.shape[1]
        r = torch.arange(L, device=score.device, dtype=score.dtype)  # (L,)
        ok = (s_sorted >= 1.0 - float(self.options.f) / (r + 1.0)) & (r[None, :] < n_cand[:, None])  # (B, L)
        k = ok.to(torch.int64).cumprod(dim=1).sum(dim=1)  # accepted prefix length (B,)
        return self.commit_best(x, score, cand, k, probs)
