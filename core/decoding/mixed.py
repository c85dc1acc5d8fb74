"""Rows with different decoding options in one batch: one engine call per step for all of them.

A server takes the strategy, its options and the step budget per request, yet the slot table makes one engine call
per step for every live row (that is what batching buys). :class:`MixedStrategies` is the strategy the table runs:
it knows, per request id, which strategy decides that row, and splits each step's rows (and its plan,
:meth:`~unmask.core.strategy.Strategy.window`) by strategy, calls each on its rows with its own step budget, and
puts their decisions back together. The decode loop passes it the rows' request ids (``per_row = True``).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from unmask.core.errors import PluginError
from unmask.core.strategy import StepInput, StepOutput, Strategy, Window


class MixedStrategies(Strategy):
    """Per-row strategies (by request id); ``default`` decides rows nobody assigned. ``steps`` is the cap: the
    largest budget any assigned strategy may have (the loop's hard limit on passes)."""

    name = "mixed"
    per_row = True

    def __init__(self, default: Strategy, max_steps: int) -> None:
        super().__init__(default.options)
        self.default = default
        self.cap = int(max(max_steps, default.steps))
        self.rows: dict[int, Strategy] = {}
        self.same: dict[str, Strategy] = {}  # one strategy object per set of options: equal requests share a call

    @property
    def steps(self) -> int:
        return self.cap

    @property
    def deterministic(self) -> bool:
        return self.default.deterministic and all(s.deterministic for s in self.rows.values())

    def assign(self, ids: list[int], strategy: Strategy) -> None:
        if strategy.steps > self.cap:
            raise PluginError(f"strategy '{strategy.name}' has {strategy.steps} steps; at most {self.cap} here")
        try:
            key = f"{type(strategy).__module__}.{type(strategy).__qualname__}:" + json.dumps(
                strategy.config_dict(), sort_keys=True)
            strategy = self.same.setdefault(key, strategy)
        except (TypeError, ValueError):  # options that are not JSON: the object decides its rows alone
            pass
        for i in ids:
            self.rows[int(i)] = strategy

    def release(self, ids: list[int]) -> None:
        for i in ids:
            self.rows.pop(int(i), None)
        if not self.rows:
            self.same.clear()

    def config_dict(self) -> dict[str, Any]:
        return {**self.default.config_dict(), "per_request": True, "max_steps": self.cap}

    def _groups(self, ids: torch.Tensor | None, B: int) -> list[tuple[Strategy, torch.Tensor]]:
        """(strategy, row positions) of each strategy deciding some of these rows."""
        if ids is None:
            return [(self.default, torch.arange(B))]
        by: dict[int, tuple[Strategy, list[int]]] = {}
        for pos, rid in enumerate(ids.tolist()):
            s = self.rows.get(int(rid), self.default)
            by.setdefault(id(s), (s, []))[1].append(pos)
        return [(s, torch.tensor(p, dtype=torch.int64)) for s, p in by.values()]

    def window(self, masked: torch.Tensor, given: torch.Tensor, step: torch.Tensor, steps: int,
               ids: torch.Tensor | None = None) -> Window:
        B, L = masked.shape
        dev = masked.device
        cand = torch.zeros((B, L), dtype=torch.bool, device=dev)
        n_masked = torch.zeros(B, dtype=torch.int64, device=dev)
        left = torch.ones(B, dtype=torch.int64, device=dev)
        block_end = step + 1  # no effect unless a strategy's blocks end later
        for s, rows in self._groups(ids, B):
            rows = rows.to(dev)
            w = s.window(masked[rows], given[rows], step[rows], s.steps)
            cand[rows], n_masked[rows], left[rows] = w.cand, w.n_masked, w.left
            if w.block_end is not None:
                block_end[rows] = w.block_end
        return Window(cand, n_masked, left, block_end)

    def step(self, x: StepInput) -> StepOutput:
        B, L = x.tokens.shape
        dev = x.tokens.device
        commit = torch.zeros((B, L), dtype=torch.bool, device=dev)
        values = torch.zeros((B, L), dtype=torch.int64, device=dev)
        remask: torch.Tensor | None = None
        advance = torch.ones(B, dtype=torch.int64, device=dev)

        def sub(t: torch.Tensor | None, rows: torch.Tensor) -> Any:
            return None if t is None else t[rows]

        for s, rows in self._groups(x.ids, B):
            rows = rows.to(dev)
            sx = StepInput(x.logits[rows], x.tokens[rows], x.masked[rows], x.given[rows], x.step[rows], s.steps,
                           x.generator, x.mask_id, window=sub(x.window, rows), n_masked=sub(x.n_masked, rows),
                           left=sub(x.left, rows), positions=sub(x.positions, rows), ids=sub(x.ids, rows))
            out = s.step(sx)
            commit[rows], values[rows] = out.commit, out.values
            if out.remask is not None:
                if remask is None:
                    remask = torch.zeros((B, L), dtype=torch.bool, device=dev)
                remask[rows] = out.remask
            if out.advance is not None:
                advance[rows] = out.advance
        return StepOutput(commit=commit, values=values, remask=remask, advance=advance)


__all__ = ["MixedStrategies"]
