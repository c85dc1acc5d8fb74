"""The committed default Zebra model keeps its accuracy (a regression here fails CI).

Measured on 1,000 test puzzles (results/zebra-default.md): margin solves 75.4% of the 3-house puzzles (92.5% of their
answer positions), vanilla 16.1%; over all sizes margin 22.9%, vanilla 3.4%. On this test's 60 puzzles: 73.3% and
21.7%. The floors sit well below, so
that noise on a small sample does not fail the suite while a broken decode loop, strategy, task layout or checkpoint
does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unmask.core.decoding.runtime import open_engine
from unmask.core.evaluate import evaluate
from unmask.core.strategy import build_strategy
from unmask.core.task import build_task

MODEL = Path(__file__).parents[1] / "models" / "zebra-default"
N = 60
MARGIN_FLOOR = 0.55  # 3-house puzzles; one standard error on 60 at 75%: 5.6 points
CELLS_FLOOR = 0.80
GAP_FLOOR = 0.30  # margin minus vanilla, in fraction solved (59 points on 1,000)


@pytest.fixture(scope="module")
def setup():
    assert (MODEL / "model.safetensors").exists(), "models/zebra-default is missing; it is part of the repository"
    engine = open_engine(MODEL, "torch")
    cfg = engine.config["task"]
    assert cfg.get("answer") == "items"
    # 3-house puzzles in the model's 6 x 6 layout (the size it solves most of)
    task = build_task({**cfg, "max_houses": 3, "grid_houses": cfg["max_houses"],
                       "grid_attributes": cfg["max_attributes"], "cache_dir": ""})
    data = task.generate("test", N, 4242)
    return engine, task, data


def test_margin_floor_and_gap_over_vanilla(setup):
    engine, task, data = setup
    margin = evaluate(engine, task, data, build_strategy({"name": "margin", "steps": 50}), seed=0)
    vanilla = evaluate(engine, task, data, build_strategy({"name": "vanilla", "steps": 50}), seed=0)
    assert margin.solved >= MARGIN_FLOOR and margin.cell_accuracy >= CELLS_FLOOR, margin.summary()
    assert margin.solved - vanilla.solved >= GAP_FLOOR, (margin.summary(), vanilla.summary())
