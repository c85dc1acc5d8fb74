"""Remasking: commit the K best masked positions, re-predict decoded ones and re-mask the least confident."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import torch

from unmask.core.registry import strategies
from unmask.core.strategy import ScoreStrategy, StepInput, StepOutput, StrategyOptions, entropy, top_two


class RemaskOptions(StrategyOptions):
    score: Literal["top_prob", "margin", "entropy"] = "margin"
    """Score that picks the K masked positions to commit (higher = first)."""
    eta: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    """At step s, re-mask floor(eta * decay(s) * K) decoded positions, K = the positions committed at step s."""
    stop: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.75
    """decay(s) = max(0, 1 - s / (stop * T)): re-masking fades out linearly and is off from step stop * T on
    (and always on a row's last step, which commits everything)."""
    below: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1.0
    """Only decoded positions whose current token has probability < below may be re-masked (1.0 = any)."""


@strategies.register("remask")
class Remask(ScoreStrategy):
    """Adaptive commits plus re-masking of decoded, non-given positions the model no longer believes.

    Each forward pass re-predicts every position. The K best masked positions (linear schedule, as ``margin``) are
    committed; then, among positions decoded at earlier steps (never given ones, never the ones just committed),
    the floor(eta * decay(s) * K) with the lowest probability p_i(x_i) of their current token are masked again and
    re-predicted at a later step. This is the re-masking of the reference code the paper builds on (RDM top-k
    decoding, Zheng et al. 2023, used by Ye et al. 2024), and of ReMDM (Wang et al. 2025), in a form where a
    re-predicted value only takes effect when the position is committed again. The number re-masked is below K
    when eta < 1, so every step makes net progress; it decays to zero, and a row's last step re-masks nothing and
    commits everything, so NFE <= steps.
    """

    Options = RemaskOptions
    name = "remask"

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        if self.options.score == "margin":
            p1, p2 = top_two(probs)
            return p1 - p2
        if self.options.score == "entropy":
            return -entropy(probs)
        return probs.amax(dim=-1)  # (B, L)

    def step(self, x: StepInput) -> StepOutput:
        probs = torch.softmax(x.logits.float(), dim=-1)  # (B, L, V)
        scores = self.add_noise(x, self.score(probs, x))  # (B, L)
        cand = self.candidates(x)
        k = torch.minimum(self.quota(x), cand.sum(dim=1))  # (B,)
        commit = self.top_k(scores, cand, k)
        # Re-prediction of decoded positions: confidence in the token they hold now.
        safe = x.tokens.clamp(0, probs.shape[-1] - 1)
        conf = probs.gather(-1, safe[..., None]).squeeze(-1)  # (B, L)
        eligible = ~x.masked & ~x.given & (conf < float(self.options.below))
        o = self.options
        decay = (1.0 - x.step.to(torch.float64) / (float(o.stop) * x.steps)).clamp(min=0.0)  # (B,)
        decay = torch.where(self.steps_left(x) <= 1, torch.zeros_like(decay), decay)
        n_remask = torch.floor(float(o.eta) * decay * k.to(torch.float64) + 1e-9).to(torch.int64)
        remask = self.top_k(-conf, eligible, n_remask)
        return StepOutput(commit=commit, values=self.choose_values(x, probs), remask=remask)
