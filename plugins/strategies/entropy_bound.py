"""Entropy bound (parallel): commit the k lowest-entropy positions while sum H - max H <= gamma, at least one."""

from __future__ import annotations

from typing import Annotated

import msgspec
import torch

from unmask.core.registry import strategies
from unmask.core.strategy import NEG_INF, ParallelOptions, StepInput, StepOutput, Strategy, entropy


class EntropyBoundOptions(ParallelOptions):
    gamma: Annotated[float, msgspec.Meta(ge=0.0)] = 0.1
    """Bound (in nats) on sum H - max H over the positions committed together; 0 = one per step."""


@strategies.register("entropy_bound")
class EntropyBound(Strategy):
    """Parallel decoding: sort candidates by entropy ascending, accept the k first while sum H - max H <= gamma.

    The EB-sampler (Ben-Hamu et al. 2025, "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded
    Unmasking"): sum H - max H bounds the error of sampling the k positions independently instead of jointly.
    sum H - max H never decreases as positions are added, so the accepted set is a prefix of the order. At least
    one per row; a row's last step commits every candidate (NFE <= steps). Noise, if set, perturbs the ranking
    score -H (the bound itself uses the true entropies). Respects ``block_size``.
    """

    Options = EntropyBoundOptions
    name = "entropy_bound"

    def step(self, x: StepInput) -> StepOutput:
        probs = torch.softmax(x.logits.float(), dim=-1)  # (B, L, V)
        h = entropy(probs)  # (B, L)
        score = self.add_noise(x, -h)
        cand = self.candidates(x)
        n_cand = cand.sum(dim=1)  # (B,)
        order = torch.sort(score.masked_fill(~cand, NEG_INF), dim=1, descending=True, stable=True).indices
        h_sorted = h.gather(1, order)  # (B, L) entropies in commit order
        L = h.shape[1]
        valid = torch.arange(L, device=h.device)[None, :] < n_cand[:, None]  # (B, L)
        h_sorted = h_sorted.masked_fill(~valid, 0.0)
        bound = h_sorted.cumsum(dim=1) - h_sorted.cummax(dim=1).values  # sum H - max H of each prefix
        ok = (bound <= float(self.options.gamma)) & valid
        k = ok.to(torch.int64).cumprod(dim=1).sum(dim=1)  # (B,)
        return self.commit_best(x, score, cand, k, probs)
