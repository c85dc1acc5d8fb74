"""The committed default Sudoku model keeps its accuracy (a regression here fails CI).

Floors are set well below the measured numbers (README, "The default model") so that noise on a small sample
does not fail the suite, while a broken decode loop, strategy, task or checkpoint does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unmask.core.evaluate import evaluate
from unmask.core.decoding.runtime import open_engine
from unmask.core.strategy import build_strategy
from unmask.core.task import build_task

MODEL = Path(__file__).parents[1] / "models" / "sudoku-default"
N = 120
MARGIN_FLOOR = 0.76  # stage 5 measured 88.4% on 1,000 test puzzles (README); stage 6 93.0% on 300 (validation)
GAP_FLOOR = 0.65  # margin minus vanilla, in fraction solved (measured 78.5 points)


@pytest.fixture(scope="module")
def setup():
    assert (MODEL / "model.safetensors").exists(), "models/sudoku-default is missing; it is part of the repository"
    engine = open_engine(MODEL, "torch")
    task = build_task({**engine.config["task"], "cache_dir": ""})
    data = task.generate("test", N, 4242)
    return engine, task, data


def test_margin_floor_and_gap_over_vanilla(setup):
    engine, task, data = setup
    margin = evaluate(engine, task, data, build_strategy({"name": "margin", "steps": 50}), seed=0)
    vanilla = evaluate(engine, task, data, build_strategy({"name": "vanilla", "steps": 50}), seed=0)
    assert margin.solved >= MARGIN_FLOOR, margin.summary()
    assert margin.solved - vanilla.solved >= GAP_FLOOR, (margin.summary(), vanilla.summary())
    assert margin.nfe_mean <= 50 and vanilla.nfe_mean <= 50
