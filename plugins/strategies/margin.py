"""Top-probability margin: commit the positions where the two most likely tokens are furthest apart."""

from __future__ import annotations

import torch

from unmask.core.registry import strategies
from unmask.core.strategy import ScoreStrategy, StepInput, top_two, top_two_logits


@strategies.register("margin")
class Margin(ScoreStrategy):
    """Adaptive: score = p_i(v1) - p_i(v2), the gap between the two most likely tokens (Kim et al. 2025, Sec. 4.1)."""

    name = "margin"

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        p1, p2 = top_two(probs)
        return p1 - p2  # (B, L)

    def score_logits(self, x: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        p1, p2, values = top_two_logits(x.logits.float())
        return p1 - p2, values
