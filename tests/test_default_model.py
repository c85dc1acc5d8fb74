"""The committed default Sudoku and Zebra models keep their accuracy (a regression here fails CI).

Floors are set well below the measured numbers (README, "The default model"; results/zebra-default.md) so that
noise on a small sample does not fail the suite, while a broken decode loop, strategy, task or checkpoint does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unmask.core.evaluate import evaluate
from unmask.core.decoding.runtime import open_engine
from unmask.core.strategy import build_strategy
from unmask.core.task import build_task

MODELS = Path(__file__).parents[1] / "models"
MODEL = MODELS / "sudoku-default"
N = 120
MARGIN_FLOOR = 0.85  # stage 7 measured 94.6% on 1,000 test puzzles (README; one standard error on 120: 2.1 points)
GAP_FLOOR = 0.72  # margin minus vanilla, in fraction solved (stage 7: 85.0 points on 1,000)
# parallel decoding, threshold on the margin: stage 7 measured 93.0% at 12.6 passes per puzzle (256 puzzles,
# bench/decode.py) against 92.6% for the 50-step reference loop
PARALLEL_FLOOR, PARALLEL_MAX_NFE = 0.83, 18.0


@pytest.fixture(scope="module")
def setup():
    assert (MODEL / "model.safetensors").exists(), "models/sudoku-default is missing; it is part of the repository"
    engine = open_engine(MODEL, "torch")
    task = build_task({**engine.config["task"], "cache_dir": ""})
    data = task.generate("test", N, 4242)
    return engine, task, data


def check_margin_over_vanilla(engine, task, data, floor: float, gap: float, cells_floor: float = 0.0) -> None:
    """Margin solves at least ``floor`` (and ``cells_floor`` of the cells) and beats vanilla by ``gap``."""
    margin = evaluate(engine, task, data, build_strategy({"name": "margin", "steps": 50}), seed=0)
    vanilla = evaluate(engine, task, data, build_strategy({"name": "vanilla", "steps": 50}), seed=0)
    assert margin.solved >= floor and margin.cell_accuracy >= cells_floor, margin.summary()
    assert margin.solved - vanilla.solved >= gap, (margin.summary(), vanilla.summary())
    assert margin.nfe_mean <= 50 and vanilla.nfe_mean <= 50


def test_margin_floor_and_gap_over_vanilla(setup):
    check_margin_over_vanilla(*setup, MARGIN_FLOOR, GAP_FLOOR)


def test_parallel_margin_threshold_keeps_accuracy_in_few_passes(setup):
    engine, task, data = setup
    spec = {"name": "confidence_threshold", "tau": 0.999, "score": "margin", "steps": 50}
    par = evaluate(engine, task, data, build_strategy(spec), seed=0, scheduler="continuous")
    assert par.solved >= PARALLEL_FLOOR and par.nfe_mean <= PARALLEL_MAX_NFE, par.summary()


# Zebra, measured on 1,000 test puzzles (results/zebra-default.md): margin solves 95.3% of the 4-house puzzles (97.6%
# of their answer positions), vanilla 11.0%; over all sizes margin 83.0%, vanilla 16.6%. On the 60 puzzles here:
# 95.0% (97.2% of positions) and 18.3% (vanilla's standard error on 60 puzzles: 5 points).
ZEBRA_N, ZEBRA_MARGIN_FLOOR, ZEBRA_CELLS_FLOOR, ZEBRA_GAP_FLOOR = 60, 0.85, 0.93, 0.55


def test_zebra_margin_floor_and_gap_over_vanilla_on_four_houses():
    model = MODELS / "zebra-default"
    assert (model / "model.safetensors").exists(), "models/zebra-default is missing; it is part of the repository"
    engine = open_engine(model, "torch")
    cfg = engine.config["task"]
    assert cfg.get("answer") == "items"
    # 4-house puzzles in the model's 6 x 6 layout (solved by margin, rarely in random order)
    task = build_task({**cfg, "min_houses": 4, "max_houses": 4, "grid_houses": cfg["max_houses"],
                       "grid_attributes": cfg["max_attributes"], "cache_dir": ""})
    data = task.generate("test", ZEBRA_N, 4242)
    check_margin_over_vanilla(engine, task, data, ZEBRA_MARGIN_FLOOR, ZEBRA_GAP_FLOOR, ZEBRA_CELLS_FLOOR)
