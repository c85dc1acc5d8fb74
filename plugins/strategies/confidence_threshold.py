"""Confidence threshold (parallel): commit every masked position whose top probability is >= tau, at least one."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import torch

from unmask.core.registry import strategies
from unmask.core.strategy import ParallelOptions, StepInput, StepOutput, Strategy, top_two


class ConfidenceThresholdOptions(ParallelOptions):
    tau: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.9
    """Commit every candidate whose confidence (plus noise, if any) is >= tau."""
    score: Literal["top_prob", "margin"] = "top_prob"
    """Confidence: max_v p_i(v), or the top-two margin p_i(v1) - p_i(v2) (which also orders the fallback commit)."""


@strategies.register("confidence_threshold")
class ConfidenceThreshold(Strategy):
    """Parallel decoding: commit all candidates with max prob >= tau, and at least the best one per row.

    Threshold-based parallel unmasking as in Fast-dLLM (Wu et al. 2025, "confidence-aware parallel decoding").
    The number committed adapts to the model's confidence, so easy rows take few forward passes. ``steps`` is a
    budget: on a row's last step every candidate is committed, so NFE <= steps. Semi-AR ``block_size`` restricts
    candidates to the current block. Noise, if set, perturbs the confidences before the threshold is applied.
    """

    Options = ConfidenceThresholdOptions
    name = "confidence_threshold"

    def step(self, x: StepInput) -> StepOutput:
        probs = torch.softmax(x.logits.float(), dim=-1)  # (B, L, V)
        if self.options.score == "margin":
            p1, p2 = top_two(probs)
            raw = p1 - p2
        else:
            raw = probs.amax(dim=-1)
        conf = self.add_noise(x, raw)  # (B, L)
        cand = self.candidates(x)  # (B, L)
        if self.options.at_least == "schedule":
            floor = torch.minimum(self.quota(x), cand.sum(dim=1))
        else:
            floor = torch.ones_like(x.step)
        best = self.top_k(conf, cand, floor)  # (B, L)
        last = (self.steps_left(x) <= 1)[:, None]  # (B, 1): the row's (or its block's) last step
        commit = cand & ((conf >= self.options.tau) | best | last)
        return StepOutput(commit=commit, values=self.choose_values(x, probs))

