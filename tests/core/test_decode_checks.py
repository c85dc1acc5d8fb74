"""The decode loop always ends and checks what engines and strategies give it."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from fakes import context_engine
from unmask.core.decoding.loop import decode
from unmask.core.engine import FunctionEngine
from unmask.core.errors import ConfigError, DeviceError, PluginError
from unmask.core.decoding.schedule import decode_many
from unmask.core.strategy import ScoreStrategy, StepInput, StepOutput, Strategy, StrategyOptions, build_strategy

V, L = 4, 6  # real tokens 0..3, mask id 4; the fake engine has V + 1 logits


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"decode did not end within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def masked_inputs(B: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((B, L), V, dtype=torch.int64), torch.zeros(B, L, dtype=torch.bool)


def run(strategy: Strategy, engine: object | None = None, *, many: bool = False, validate: bool = True, B: int = 3):
    inputs, given = masked_inputs(B)
    engine = engine if engine is not None else context_engine(V, L)
    with time_limit(20):
        if many:
            return decode_many(engine, inputs, given, strategy, mask_id=V, generator=torch.Generator().manual_seed(0),
                               batch_size=2, validate=validate)
        return decode(engine, inputs, given, strategy, mask_id=V, generator=torch.Generator().manual_seed(0),
                      validate=validate)


class Custom(Strategy):
    """A strategy whose step output is made by ``fn(x) -> StepOutput`` (the misbehaviour under test)."""

    name = "custom"

    def __init__(self, fn, steps: int = 8) -> None:  # noqa: ANN001
        super().__init__(StrategyOptions(steps=steps))
        self.fn = fn

    def step(self, x: StepInput) -> StepOutput:
        return self.fn(x)


def first_masked(x: StepInput) -> torch.Tensor:
    pos = x.masked.to(torch.int64).argmax(dim=1)  # (B,)
    return torch.nn.functional.one_hot(pos, x.masked.shape[1]).bool() & x.masked


def undo(x: StepInput, advance: int) -> StepOutput:
    """Commits one position, re-masks everything decoded: never makes progress."""
    c = first_masked(x)
    return StepOutput(commit=c, values=torch.zeros_like(x.tokens), remask=~x.given,
                      advance=torch.full_like(x.step, advance))


@pytest.mark.parametrize("many", [False, True])
def test_never_finishing_strategy_is_stopped(many):
    # advance 0 and re-masking what it commits: checked per step ...
    with pytest.raises(PluginError, match=r"strategy 'custom' returned advance < 1 for rows 0, 1"):
        run(Custom(lambda x: undo(x, 0)), many=many)
    # ... and with the checks off, the hard cap on passes still ends it, naming the strategy
    with pytest.raises(PluginError, match=r"strategy 'custom' did not finish a row within 8 passes"):
        run(Custom(lambda x: undo(x, 0)), many=many, validate=False)
    # advancing, but re-masking everything: ends at the last step
    with pytest.raises(PluginError, match=r"strategy 'custom' left masked positions after its last step \(8\)"):
        run(Custom(lambda x: undo(x, 1)), many=many)


def commit_all(values) -> Custom:  # noqa: ANN001
    return Custom(lambda x: StepOutput(commit=x.masked.clone(), values=values(x)))


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize(
    "values",
    [lambda x: torch.full_like(x.tokens, V), lambda x: torch.full_like(x.tokens, V + 7),
     lambda x: torch.full_like(x.tokens, -1)],
    ids=["mask-id", "past-vocab", "negative"],
)
def test_values_must_be_real_tokens(values, many):
    with pytest.raises(PluginError, match=r"strategy 'custom' committed values that are the mask id or outside the "
                                          r"vocabulary 0\.\.4 \(rows 0, 1"):
        run(commit_all(values), many=many)


@pytest.mark.parametrize(
    "fn, what",
    [
        (lambda x: StepOutput(commit=x.masked[:, :1].clone(), values=torch.zeros_like(x.tokens)),
         "commit as torch.bool"),
        (lambda x: StepOutput(commit=x.masked.to(torch.int64), values=torch.zeros_like(x.tokens)),
         "commit as torch.int64"),
        (lambda x: StepOutput(commit=x.masked.clone(), values=torch.zeros(x.tokens.shape[1], dtype=torch.int64)),
         "values as torch.int64 \\(6,\\)"),
        (lambda x: StepOutput(commit=x.masked.clone(), values=torch.zeros_like(x.tokens, dtype=torch.int32)),
         "values as torch.int32"),
        (lambda x: StepOutput(commit=x.masked.clone(), values=torch.zeros_like(x.tokens),
                              advance=torch.ones(1, dtype=torch.int64)), "advance as torch.int64 \\(1,\\)"),
        (lambda x: StepOutput(commit=x.masked.clone(), values=[0] * 6), "values as a list"),
        (lambda x: (x.masked, x.tokens), "returned a tuple"),
    ],
)
def test_strategy_output_shapes_and_dtypes_are_checked(fn, what):
    with pytest.raises(PluginError, match=f"strategy 'custom' (returned )?{what}"):
        run(Custom(fn))


def test_not_a_strategy_is_refused():
    class Duck:
        steps = 10

    with pytest.raises(PluginError, match="is a Duck without a step\\(\\) method"):
        run(Duck())  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="'custom' returned a NoneType; step\\(\\) must return a StepOutput"):
        run(Custom(lambda x: None))
    with pytest.raises(PluginError, match="steps = 0"):
        run(Custom(lambda x: undo(x, 1), steps=0))


def engine_with(fn) -> FunctionEngine:  # noqa: ANN001
    base = context_engine(V, L)
    return FunctionEngine(lambda t: fn(base.fn(t)), V + 1, L)


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_name_the_rows(bad, many):
    def poison(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        if logits.shape[0] > 1:
            logits[1, 2, 0] = bad
        return logits

    with pytest.raises(DeviceError, match="non-finite logits .* for row 1;"):
        run(build_strategy("margin"), engine_with(poison), many=many)
    # all -inf at a masked position is non-finite too (softmax would be NaN)
    with pytest.raises(DeviceError, match="for rows 0, 1[;,]"):  # decode_many: 2 slots
        run(build_strategy("top_prob"), engine_with(lambda lg: torch.full_like(lg, float("-inf"))), many=many)


def test_wrong_vocabulary_size_is_an_error():
    # the engine says V + 1 but returns V + 3 logits per position
    eng = FunctionEngine(lambda t: torch.zeros(*t.shape, V + 3), V + 1, L)
    with pytest.raises(PluginError, match="logits over 7 tokens but the model's vocabulary has 5"):
        run(build_strategy("margin"), eng)
    # the caller (the task) may say what the vocabulary is, whatever the engine claims
    inputs, given = masked_inputs()
    with pytest.raises(PluginError, match="logits over 5 tokens but the model's vocabulary has 9"):
        decode(context_engine(V, L), inputs, given, build_strategy("margin"), mask_id=V,
               generator=torch.Generator(), vocab_size=9)


class NegInf(ScoreStrategy):
    name = "neg_inf"

    def score(self, probs: torch.Tensor, x: StepInput) -> torch.Tensor:
        s = torch.full(probs.shape[:2], float("-inf"))
        s[:, 0] = float("nan")
        return s


@pytest.mark.parametrize("steps", [1, 3])
def test_minus_inf_scored_candidates_still_commit_on_the_last_step(steps):
    res = run(NegInf(StrategyOptions(steps=steps)))
    assert not bool((res.tokens == V).any())
    assert res.nfe.tolist() == [steps] * 3


@pytest.mark.parametrize("opt, msg", [
    ({"temperature": float("inf")}, "'temperature' must be a finite number, got inf"),
    ({"noise": "gumbel", "noise_scale": float("inf")}, "'noise_scale' must be a finite number, got inf"),
    ({"noise_scale": float("nan")}, "strategy.noise_scale"),
])
def test_non_finite_options_are_refused(opt, msg):
    with pytest.raises(ConfigError, match=msg):
        build_strategy({"name": "margin", **opt})


def test_checks_off_decodes_the_same():
    a = run(build_strategy("margin"))
    b = run(build_strategy("margin"), validate=False)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe, b.nfe)
