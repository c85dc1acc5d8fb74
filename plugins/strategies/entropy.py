"""Entropy: commit the masked positions whose predictive distribution has the lowest entropy (score = -H(p_i))."""

from __future__ import annotations

import torch

from unmask.core.registry import strategies
from unmask.core.strategy import ScoreStrategy, StepInput, entropy


@strategies.register("entropy")
class Entropy(ScoreStrategy):
    """Adaptive: score = -H(p_i) = sum_v p_i(v) log p_i(v), the K lowest-entropy positions first.

    PAPER.md, "Beyond the paper" (the entropy ordering of public MDM decoders such as Dream's). K per row follows
    the linear schedule exactly as for ``top_prob`` and ``margin`` (Kim et al. 2025, Alg. 2).
    """

    name = "entropy"

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        return -entropy(probs)  # (B, L)
