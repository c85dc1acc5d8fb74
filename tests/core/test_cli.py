"""The command line: one-line errors without tracebacks, list output, eval JSON, solve output, the example plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "sudoku-default.toml")
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def unmask(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unmask.core.cli", *args], capture_output=True, text=True,
                          input=stdin, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [x for x in p.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from unmask.core.training.trainer import train

    tmp = tmp_path_factory.mktemp("cli")
    sets = [f'out="{tmp / "run"}"', "train.steps=2", "train.batch_size=8", "train.data_size=100", "train.val_size=0",
            f'task.cache_dir="{tmp / "cache"}"', "backbone.d_model=32", "backbone.n_layers=1", "backbone.n_heads=2"]
    return train(CONFIG, sets, progress=False)


def test_list_strategies():
    p = unmask("list", "strategies")
    assert p.returncode == 0
    for name in ("vanilla", "top_prob", "margin"):
        assert any(line.split()[0] == name and line.rstrip().endswith("[unmask]") for line in p.stdout.splitlines())


@pytest.mark.parametrize(
    "puzzle, needle",
    [
        ("123", "puzzle has 3 cells, expected 81"),
        (PUZZLE[:-1] + "x", "bad character 'x' at row 9, column 9"),
        ("55" + PUZZLE[2:], "digit 5 appears twice in row 1"),
    ],
)
def test_solve_malformed_input(model, puzzle, needle):
    assert_one_line_error(unmask("solve", "--model", str(model), puzzle), needle)


def test_solve_unsolvable(model):
    # two givens force a contradiction: row 1 needs a 9 but column 9 and box already hold it elsewhere
    bad = "12345678." + "........9" + "." * 63
    assert_one_line_error(unmask("solve", "--model", str(model), bad), "no solution")


def test_solve_from_stdin_prints_board_and_order(model):
    p = unmask("solve", "--model", str(model), "--show-order", "-", stdin=PUZZLE)
    assert p.returncode in (0, 1), p.stderr
    out = p.stdout.splitlines()
    assert out[0].count("|") == 2 and "forward passes" in p.stdout and "order" in p.stdout


def test_bad_inputs_are_one_line_errors(model, tmp_path):
    assert_one_line_error(unmask("eval", "--model", str(tmp_path / "none"), "--generate", "4"), "does not exist")
    assert_one_line_error(unmask("eval", "--model", str(model), "--generate", "4", "--strategies", "margn"),
                          "unknown strategy 'margn'", "margin")
    assert_one_line_error(unmask("eval", "--model", str(model), "--generate", "4", "--steps", "0"),
                          "argument --steps", "positive integer")
    assert_one_line_error(unmask("eval", "--model", str(model), "--generate", "4", "--split", "easy"),
                          "unknown split 'easy'")
    assert_one_line_error(unmask("eval", "--model", str(model), "--generate", "4", "--device", "cuda"), "CUDA")
    assert_one_line_error(unmask("eval", "--model", str(model), "--generate", "4", "--task", "zebra"),
                          "trained for task 'sudoku'")
    assert_one_line_error(unmask("train", "--config", CONFIG, "--set", "train.lr=fast"), "train.lr")
    assert_one_line_error(unmask("train", "--config", str(tmp_path / "x.toml")), "not found")
    data = tmp_path / "bad.txt"
    data.write_text("# comment\n" + PUZZLE + "\n" + PUZZLE[:40] + "\n")
    assert_one_line_error(unmask("eval", "--model", str(model), "--data", str(data)), "line 3")


def test_eval_writes_json_and_plot(model, tmp_path):
    out = tmp_path / "r.json"
    p = unmask("eval", "--model", str(model), "--generate", "6", "--strategies", "margin,vanilla", "--steps", "5",
               "--json", str(out), "--trace")
    assert p.returncode == 0, p.stderr
    rep = json.loads(out.read_text())
    assert rep["task"] == "sudoku" and rep["n"] == 6 and rep["runtime"] == "torch"
    assert [r["strategy"] for r in rep["results"]] == ["margin", "vanilla"]
    for r in rep["results"]:
        assert 0 <= r["solved"] <= 1 and 0 <= r["cell_accuracy"] <= 1 and 1 <= r["nfe_mean"] <= 5
        assert r["puzzles_per_s"] > 0 and "by_clues" in r
    assert out.with_suffix(".png").stat().st_size > 1000
    assert (tmp_path / "r-order-margin.png").exists()
    assert "% solved" in p.stdout


def test_example_strategy_installs_and_decodes(model, tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(ROOT / "examples" / "unmask-example-strategy")],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    p = unmask("list", "strategies", env=env)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.split()[0] == "log_ratio")
    assert "[unmask-example-strategy]" in line
    p = unmask("eval", "--model", str(model), "--generate", "4", "--strategies", "log_ratio", "--steps", "5", env=env)
    assert p.returncode == 0, p.stderr
    assert "log_ratio" in p.stdout
    # and it is subject to the same contract as the built-ins
    code = (
        "import torch, sys; sys.path.insert(0, %r); from fakes import context_engine;"
        "from unmask.core.decoding.loop import decode; from unmask.core.strategy import build_strategy;"
        "s = build_strategy({'name': 'log_ratio', 'steps': 4});"
        "r = decode(context_engine(4, 9), torch.full((3, 9), 4), torch.zeros(3, 9, dtype=torch.bool), s, mask_id=4,"
        " generator=torch.Generator().manual_seed(0));"
        "assert not (r.tokens == 4).any() and (r.nfe <= 4).all(); print('ok')" % str(ROOT / "tests")
    )
    q = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=120)
    assert q.stdout.strip() == "ok", q.stderr
