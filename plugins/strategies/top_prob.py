"""Top probability: commit the masked positions whose most likely token is most likely (score = max_v p_i(v))."""

from __future__ import annotations

import torch

from unmask.core.registry import strategies
from unmask.core.strategy import ScoreStrategy, StepInput, top_two_logits


@strategies.register("top_prob")
class TopProb(ScoreStrategy):
    """Adaptive: score = max_v p_i(v) (Kim et al. 2025, Sec. 4.1, "top probability")."""

    name = "top_prob"

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        return probs.amax(dim=-1)  # (B, L)

    def score_logits(self, x: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        p1, _p2, values = top_two_logits(x.logits.float())
        return p1, values
