"""The strategy contract and the shared machinery of score-based decoding strategies.

A strategy looks at the model's logits for the rows still being decoded and returns, per row, which masked
positions to commit and their values (Kim et al., ICML 2025, "Train for the Worst, Plan for the Best", Sec. 4).
Quotas are per row (a (B,) tensor); scores are "higher = commit first"; only masked, non-given positions are
candidates. Strategies are plugins registered in ``unmask.core.registry.strategies``.

Randomness always comes from the explicit ``torch.Generator`` passed in. Random numbers are drawn on the
generator's device and moved to the logits' device, so a CPU generator gives the same decisions on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import torch

from unmask.core.config import Section, plugin_section

NEG_INF = float("-inf")


class StrategyOptions(Section):
    """Options every built-in strategy shares (PAPER.md, "Decoding")."""

    steps: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 50
    """T: number of steps on the uniform grid t: 1 -> 0 (linear schedule alpha_t = 1 - t)."""
    k_rule: Literal["deterministic", "binomial"] = "deterministic"
    """K = round(|M| / (T - step)) (>= 1), or K ~ Binomial(|M|, 1 / (T - step)) clamped to >= 1."""
    noise: Literal["none", "gumbel", "gaussian"] = "none"
    """Noise added to the scores before ranking."""
    noise_scale: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """Gumbel coefficient or Gaussian sigma."""
    noise_anneal: bool = False
    """Scale the noise by (1 - step / T): strong early, none at the end."""
    value: Literal["argmax", "sample"] = "argmax"
    """Committed token: the most likely one, or a sample from softmax(logits / temperature)."""
    temperature: Annotated[float, msgspec.Meta(gt=0.0)] = 1.0
    block_size: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Semi-autoregressive blocks: when > 0 a row's free (non-given) positions are cut, in sequence order, into
    blocks of this many, and only masked positions of the first block that still has masks are candidates (for a
    text prompt the free positions are the generation, so block 0 starts right after the prompt, as in LLaDA)."""
    block_steps: Literal["shared", "even"] = "shared"
    """How blocks spend the steps. "shared": K follows the row's whole schedule (capped by the block) and the
    row's last step commits everything left. "even": LLaDA's semi-autoregressive schedule (Nie et al. 2025,
    ``generate.py``): block b of n gets steps floor(b T / n) .. floor((b+1) T / n) - 1, spreads its masks evenly
    over them (K = ceil(masked in block / its steps left): LLaDA's ``get_num_transfer_tokens``) and commits all of
    them on its last one; a block finished early (a parallel strategy) hands its unused steps on by advancing the
    row to the next block's first step."""


class ParallelOptions(StrategyOptions):
    """Options of strategies that commit a variable number of positions per step."""

    at_least: Literal["one", "schedule"] = "one"
    """Per-row floor: the single best candidate, or the linear schedule's K (never slower than ``top_prob``)."""


@dataclass
class StepInput:
    """What a strategy sees for the rows being decoded this step (B = number of live rows).

    The position axis has L columns: the whole sequence, or, when the engine computes logits only where a
    strategy can commit (a text model: (B, L, V) over a 126k vocabulary would not fit), the K columns of this
    step's window (:meth:`Strategy.window`) gathered per row, ``positions`` saying which sequence position each
    column is (padding columns: not masked, given). Strategies work on whatever columns they get.
    """

    logits: torch.Tensor  # (B, L, V) float; the mask token's logit is already -inf
    tokens: torch.Tensor  # (B, L) int64; masked positions hold the mask id
    masked: torch.Tensor  # (B, L) bool; positions still to decode
    given: torch.Tensor  # (B, L) bool; prompt positions, never changed
    step: torch.Tensor  # (B,) int64; each row's own step index, 0 .. steps-1
    steps: int  # T
    generator: torch.Generator
    mask_id: int
    window: torch.Tensor | None = None  # (B, L) bool: this step's candidates, when the loop planned them
    n_masked: torch.Tensor | None = None  # (B,) int64: masks the schedule spreads over ``left`` (default: row's)
    left: torch.Tensor | None = None  # (B,) int64 >= 1: steps left for them (1 = commit them all now)
    positions: torch.Tensor | None = None  # (B, L) int64: sequence position of each column (None: identity)
    ids: torch.Tensor | None = None  # (B,) int64: the rows' request ids, for strategies that decide per request


@dataclass
class Window:
    """A step's plan, made before the engine runs (it needs no logits): which positions are candidates, and the
    schedule's count and steps left for them. ``block_end`` (B,) is set under ``block_steps = "even"``: the step
    a row moves to once its current block has no mask left."""

    cand: torch.Tensor  # (B, L) bool
    n_masked: torch.Tensor  # (B,) int64
    left: torch.Tensor  # (B,) int64 >= 1
    block_end: torch.Tensor | None = None  # (B,) int64


@dataclass
class StepOutput:
    commit: torch.Tensor  # (B, L) bool; subset of masked, >= 1 per row
    values: torch.Tensor  # (B, L) int64; read where commit
    remask: torch.Tensor | None = None  # (B, L) bool; decoded, non-given positions to mask again (remasking)
    advance: torch.Tensor | None = None  # (B,) int64 steps consumed (default 1 each)


class Strategy:
    """Base class of decoding strategies."""

    Options: ClassVar[type[Section]] = StrategyOptions
    name: ClassVar[str] = ""

    def __init__(self, options: Section | None = None) -> None:
        self.options: Any = options if options is not None else self.Options()

    @property
    def steps(self) -> int:
        return int(self.options.steps)

    @property
    def deterministic(self) -> bool:
        """True when decisions do not depend on the generator (argmax values, no noise, fixed K)."""
        o = self.options
        return (
            getattr(o, "value", "argmax") == "argmax"
            and getattr(o, "noise", "none") == "none"
            and getattr(o, "k_rule", "deterministic") == "deterministic"
        )

    def step(self, x: StepInput) -> StepOutput:
        raise NotImplementedError

    def ineffective_options(self) -> list[str]:
        """One line per option that is set but cannot change anything with the others as they are (the CLI warns)."""
        o = self.options
        noise, scale = getattr(o, "noise", "none"), getattr(o, "noise_scale", 0.0)
        out = []
        if noise != "none" and scale == 0.0:
            out.append(f"noise={noise} has no effect with noise_scale=0; set noise_scale > 0 (e.g. 0.5)")
        if noise == "none" and scale != 0.0:
            out.append(f"noise_scale={scale:g} has no effect with noise=none; set noise=gumbel or noise=gaussian")
        if noise == "none" and getattr(o, "noise_anneal", False):
            out.append("noise_anneal has no effect with noise=none")
        if getattr(o, "value", "argmax") == "argmax" and getattr(o, "temperature", 1.0) != 1.0:
            out.append(f"temperature={o.temperature:g} has no effect with value=argmax; set value=sample")
        return out

    def config_dict(self) -> dict[str, Any]:
        return plugin_section(self.name, self.options)

    # -- helpers for subclasses ---------------------------------------------------------------------------------
    @staticmethod
    def rand(x: StepInput, shape: tuple[int, ...], kind: str = "uniform") -> torch.Tensor:
        """Random numbers from the explicit generator, drawn on its device, returned on the logits' device."""
        dev = x.generator.device
        if kind == "uniform":
            r = torch.rand(shape, generator=x.generator, device=dev)
        else:
            r = torch.randn(shape, generator=x.generator, device=dev)
        return r.to(x.logits.device)

    def steps_left(self, x: StepInput) -> torch.Tensor:
        """(B,) steps left for the masks the schedule is spreading (the row's, or its block's under
        ``block_steps = "even"``); 1 means commit them all now."""
        if x.left is not None:
            return x.left
        if x.window is None and int(getattr(self.options, "block_size", 0) or 0) > 0:
            return self.window(x.masked, x.given, x.step, x.steps).left
        return (x.steps - x.step).clamp(min=1)

    def quota(self, x: StepInput, n_masked: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row K (B,): |M_t| (alpha_s - alpha_t) / (1 - alpha_t) = |M_t| / (T - step) for the linear schedule.

        Rounded (or Binomial), at least 1, and everything left on the row's last step. ``n_masked`` defaults to
        the count the loop's plan gives (the row's masks, or its block's); under ``block_steps = "even"`` K is
        ceil(n / steps left), LLaDA's even split.
        """
        if x.n_masked is not None:
            n_masked = x.n_masked
        elif n_masked is None or (x.window is None and int(getattr(self.options, "block_size", 0) or 0) > 0):
            n_masked = self.window(x.masked, x.given, x.step, x.steps).n_masked
        remaining = self.steps_left(x)  # (B,)
        n = n_masked.to(torch.float64)
        if self.options.k_rule == "binomial":
            p = (1.0 / remaining.to(torch.float64)).to(x.generator.device)
            k = torch.binomial(n.to(x.generator.device), p, generator=x.generator).to(n.device)
        elif getattr(self.options, "block_steps", "shared") == "even":
            k = torch.ceil(n / remaining)
        else:
            k = torch.floor(n / remaining + 0.5)
        k = k.clamp(min=1).to(torch.int64)
        k = torch.where(remaining <= 1, n_masked, k)
        return torch.minimum(k, n_masked)

    def window(self, masked: torch.Tensor, given: torch.Tensor, step: torch.Tensor, steps: int) -> Window:
        """This step's plan from the decoding state alone (no logits): the candidates (masked positions of the
        current block when blocks are on), the count the schedule spreads and its steps left. The decode loop
        calls it before the engine, so an engine that can computes logits at the candidates only."""
        cand = masked & ~given  # (B, L)
        left = (steps - step).clamp(min=1)  # (B,)
        bs = int(getattr(self.options, "block_size", 0) or 0)
        if bs <= 0:
            return Window(cand, cand.sum(dim=1), left)
        free = ~given
        block_of = (free.cumsum(dim=1) - 1) // bs  # (B, L) block of each free position (in free-position order)
        L = cand.shape[1]
        first = torch.where(cand, block_of, torch.full_like(block_of, L + 1)).amin(dim=1)  # (B,)
        in_block = cand & (block_of == first[:, None])
        if getattr(self.options, "block_steps", "shared") == "even":
            n_blocks = (free.sum(dim=1) + bs - 1) // bs  # (B,)
            nb = n_blocks.clamp(min=1)
            end = torch.div((first + 1).clamp(max=nb) * steps, nb, rounding_mode="floor")  # (B,)
            left_b = (end - step).clamp(min=1)
            last = (steps - step) <= 1
            in_block = torch.where(last[:, None], cand, in_block)
            return Window(in_block, in_block.sum(dim=1), torch.where(last, left, left_b), end)
        last = left <= 1
        return Window(torch.where(last[:, None], cand, in_block), cand.sum(dim=1), left)

    def candidates(self, x: StepInput) -> torch.Tensor:
        """(B, L) bool: masked positions eligible this step (restricted to the current block if blocks are on)."""
        if x.window is not None:
            return x.window & x.masked & ~x.given
        if int(getattr(self.options, "block_size", 0) or 0) <= 0:
            return x.masked & ~x.given
        return self.window(x.masked, x.given, x.step, x.steps).cand

    def noise_scale(self, x: StepInput) -> torch.Tensor | float:
        scale = float(self.options.noise_scale)
        if self.options.noise_anneal:
            return scale * (1.0 - x.step.to(torch.float32) / x.steps)[:, None]  # (B, 1)
        return scale

    def add_noise(self, x: StepInput, scores: torch.Tensor) -> torch.Tensor:
        kind = self.options.noise
        if kind == "none" or self.options.noise_scale == 0.0:
            return scores
        if kind == "gumbel":
            u = self.rand(x, tuple(scores.shape)).clamp_(1e-10, 1.0 - 1e-7)
            eps = -torch.log(-torch.log(u))
        else:
            eps = self.rand(x, tuple(scores.shape), "normal")
        return scores + self.noise_scale(x) * eps

    def choose_values(self, x: StepInput, probs: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) committed values: argmax, or sampled from softmax(logits / temperature) with the generator."""
        if self.options.value == "argmax":
            return x.logits.argmax(dim=-1)
        # shifted by the max before dividing, NaN (-inf / tiny, inf - inf) dropped: any finite temperature samples
        logits = x.logits.float()
        logits = ((logits - logits.amax(dim=-1, keepdim=True)) / float(self.options.temperature)).nan_to_num(
            nan=float("-inf"))
        probs_t = torch.softmax(logits, dim=-1)
        B, L, V = probs_t.shape
        u = self.rand(x, (B, L, 1)).clamp_(min=1e-12)
        cdf = probs_t.cumsum(dim=-1)
        values = (cdf < u * cdf[..., -1:]).sum(dim=-1)  # inverse-CDF sampling; (B, L)
        return values.clamp_(max=V - 1)

    @staticmethod
    def top_k(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the k[b] highest-scoring candidates of each row b (ties broken by position).

        Candidates always rank above non-candidates, even when scored -inf (e.g. by huge noise) or NaN (both rank
        last among candidates), so a row's last step, with k = all candidates, commits every one of them.
        """
        s = scores if scores.is_floating_point() else scores.float()
        lowest = torch.finfo(s.dtype).min
        s = s.nan_to_num(nan=lowest, neginf=lowest).masked_fill(~candidates, NEG_INF)
        order = torch.sort(s, dim=1, descending=True, stable=True).indices  # (B, L)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
        return (ranks < k[:, None]) & candidates


    def commit_best(self, x: StepInput, score: torch.Tensor, cand: torch.Tensor, k: torch.Tensor,
                    probs: torch.Tensor | None = None) -> StepOutput:
        """Commit each row's ``k`` best candidates by ``score``: at least one (or the schedule's K when
        ``at_least = "schedule"``), never more than the candidates, and everything left on the row's last step."""
        n_cand = cand.sum(dim=1)  # (B,)
        if getattr(self.options, "at_least", "one") == "schedule":
            k = torch.maximum(k, self.quota(x))
        k = torch.where(self.steps_left(x) <= 1, n_cand, torch.minimum(k.clamp(min=1), n_cand))
        return StepOutput(commit=self.top_k(score, cand, k), values=self.choose_values(x, probs))


class ScoreStrategy(Strategy):
    """Adaptive strategies: commit the K highest-scoring candidates of each row (Kim et al. 2025, Alg. 2)."""

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        """(B, L) scores from probabilities (B, L, V); higher = commit first."""
        raise NotImplementedError

    def score_logits(self, x: StepInput) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Optional fast path: (scores (B, L), argmax values (B, L)) straight from the logits, without the (B, L, V)
        softmax :meth:`score` needs (with a 126k vocabulary that tensor is most of a step's host work); None: use
        :meth:`score`. Used only with ``value = "argmax"``."""
        return None

    def step(self, x: StepInput) -> StepOutput:
        fast = self.score_logits(x) if self.options.value == "argmax" else None
        if fast is not None:
            raw, values = fast
            probs = None
        else:
            probs = torch.softmax(x.logits.float(), dim=-1)  # (B, L, V)
            raw = self.score(probs, x)
        scores = self.add_noise(x, raw)  # (B, L)
        cand = self.candidates(x)
        k = torch.minimum(self.quota(x), cand.sum(dim=1))
        commit = self.top_k(scores, cand, k)
        return StepOutput(commit=commit, values=values if fast is not None else self.choose_values(x, probs))


def top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest and second-largest probability of each position: (B, L) each."""
    top = probs.topk(2, dim=-1).values
    return top[..., 0], top[..., 1]


def top_two_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p1, p2, argmax) per position (B, L) from logits (B, L, V), without materialising the softmax: the two
    largest logits minus the log-partition function."""
    top = logits.topk(2, dim=-1)
    lse = torch.logsumexp(logits, dim=-1)  # (B, L)
    p = torch.exp(top.values - lse[..., None])
    return p[..., 0], p[..., 1], top.indices[..., 0]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) per position (B, L), in nats."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)


__all__ = [
    "StrategyOptions",
    "StepInput",
    "StepOutput",
    "Window",
    "Strategy",
    "ScoreStrategy",
    "top_two",
    "top_two_logits",
    "entropy",
]


def build_strategy(section: Any, path: str = "strategy", **overrides: Any) -> Strategy:
    """A strategy from its name or section (``{"name": "margin", "steps": 50, ...}``); ``overrides`` fill options."""
    from unmask.core.config import resolve_plugin, split_plugin_section
    from unmask.core.registry import strategies

    name, rest = split_plugin_section(section, path)
    rest = {**{k: v for k, v in overrides.items() if v is not None}, **rest}
    name, cls, options = resolve_plugin(strategies, {"name": name, **rest}, path)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        from unmask.core.errors import PluginError

        raise PluginError(f"strategy '{name}' is {cls!r}, not a subclass of unmask.core.strategy.Strategy")
    strategy = cls(options)
    if not strategy.name:
        strategy.name = name  # type: ignore[misc]
    return strategy
