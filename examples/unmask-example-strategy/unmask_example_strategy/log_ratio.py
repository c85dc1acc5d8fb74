"""Log-ratio strategy: commit first where the most likely token is most likely *relative* to the runner-up."""

from __future__ import annotations

import torch

from unmask.core.strategy import ScoreStrategy, StepInput, StrategyOptions, top_two


class LogRatioOptions(StrategyOptions):
    floor: float = 1e-6
    """Probabilities are clamped to at least this before taking logs."""


class LogRatio(ScoreStrategy):
    """Adaptive: score = log p(v1) - log p(v2), the log-odds of the top token over the runner-up."""

    Options = LogRatioOptions
    name = "log_ratio"

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        p1, p2 = top_two(probs)
        f = self.options.floor
        return torch.log(p1.clamp_min(f)) - torch.log(p2.clamp_min(f))  # (B, L)
