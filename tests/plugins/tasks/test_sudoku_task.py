"""The sudoku task plugin: layout, splits, parsing, files, scoring, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from unmask.core.errors import InputError
from unmask.core.task import build_task
from unmask.plugins.tasks import _sudoku_lib as lib
from unmask.plugins.tasks.sudoku import MASK, tokens_to_digits

PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


@pytest.fixture(scope="module")
def task():
    return build_task({"name": "sudoku", "cache_dir": ""})


def test_layout(task):
    assert (task.vocab_size, task.seq_len, task.mask_id) == (10, 81, 9)
    s = task.structure()
    assert set(s) == {"row", "col", "box"} and s["box"][1][80] == 8 and s["col"][1][10] == 1 and s["row"][1][10] == 1


def test_generate_splits(task):
    test = task.generate("test", 40, 1)
    hard = task.generate("hard", 10, 1)
    for d in (test, hard):
        assert d.inputs.shape[1] == 81 and (d.inputs[d.given] != MASK).all() and (d.inputs[~d.given] == MASK).all()
        assert lib.valid_grids(tokens_to_digits(d.targets)).all()
        assert (d.targets[d.given] == d.inputs[d.given]).all()
    solved, _ = lib.step_solve_batch(tokens_to_digits(test.inputs))
    assert solved.all()
    solved, _ = lib.step_solve_batch(tokens_to_digits(hard.inputs))
    assert not solved.any()
    again = task.generate("test", 40, 1)
    assert np.array_equal(again.inputs, test.inputs)
    with pytest.raises(InputError, match="unknown split 'easy'"):
        task.generate("easy", 1, 0)


def test_parse_and_format(task):
    d = task.parse(PUZZLE)
    assert d.given.sum() == 30 and d.targets is not None and bool(d.meta["unique"][0])
    grid = "\n".join(PUZZLE[i : i + 9].replace(".", "0") for i in range(0, 81, 9))
    assert np.array_equal(task.parse(grid).inputs, d.inputs)
    assert task.format(d.targets[0]).splitlines()[0] == "5 3 4 | 6 7 8 | 9 1 2"
    several = task.parse("." * 81)
    assert several.targets is None and not bool(several.meta["unique"][0])
    with pytest.raises(InputError, match="no solution"):
        task.parse("12345678." + "........9" + "." * 63)


def test_score(task):
    d = task.parse(PUZZLE)
    perfect = task.score(d.targets, d)
    assert perfect["solved"].all() and perfect["cell_accuracy"][0] == 1.0 and not perfect["invalid"].any()
    wrong = d.targets.copy()
    blank = np.flatnonzero(~d.given[0])
    wrong[0, blank[0]], wrong[0, blank[1]] = wrong[0, blank[1]], wrong[0, blank[0]]
    s = task.score(wrong, d)
    assert not s["solved"][0] and s["cell_accuracy"][0] < 1.0
    # without a reference solution, any valid grid that keeps the givens counts
    free = task.parse("." * 81)
    sol = lib.generate_solutions(1, 0)
    from unmask.plugins.tasks.sudoku import digits_to_tokens

    assert task.score(digits_to_tokens(sol), free)["solved"][0]


def test_files_roundtrip(task, tmp_path):
    d = task.generate("test", 5, 2)
    path = tmp_path / "p.txt"
    lib.write_puzzle_file(path, tokens_to_digits(np.where(d.given, d.inputs, MASK)), tokens_to_digits(d.targets))
    back = task.read_file(str(path))
    assert np.array_equal(back.inputs, d.inputs) and np.array_equal(back.targets, d.targets)


def test_augment_keeps_validity(task):
    d = task.generate("test", 30, 3)
    a = task.augment(d, np.random.default_rng(0))
    assert lib.valid_grids(tokens_to_digits(a.targets)).all()
    assert (a.targets[a.given] == a.inputs[a.given]).all() and (a.given.sum(1) == d.given.sum(1)).all()
    assert not np.array_equal(a.inputs, d.inputs)


def _singles_only(grid: np.ndarray) -> bool:
    """Independent reference: does repeating naked and hidden singles alone fill the grid (81,) (0 = blank)?"""
    g = grid.astype(int).reshape(9, 9).copy()
    units = [[(r, c) for c in range(9)] for r in range(9)] + [[(r, c) for r in range(9)] for c in range(9)]
    units += [[(br + i, bc + j) for i in range(3) for j in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)]

    def cands(r: int, c: int) -> set[int]:
        box = {g[br, bc] for br in range(r // 3 * 3, r // 3 * 3 + 3) for bc in range(c // 3 * 3, c // 3 * 3 + 3)}
        return set(range(1, 10)) - set(g[r]) - set(g[:, c]) - box

    progress = True
    while progress:
        progress = False
        for r in range(9):
            for c in range(9):
                if g[r, c] == 0 and len(k := cands(r, c)) == 1:
                    g[r, c] = k.pop()
                    progress = True
        for unit in units:
            for d in range(1, 10):
                spots = [(r, c) for r, c in unit if g[r, c] == 0 and d in cands(r, c)]
                if len(spots) == 1 and d not in {g[r, c] for r, c in unit}:
                    g[spots[0]] = d
                    progress = True
    return bool((g > 0).all())


def test_groups_name_what_the_solver_needs(tmp_path):
    """'singles' puzzles fall to naked/hidden singles alone (checked by an independent solver), 'eliminations' ones
    do not, hard puzzles are 'beyond'; clue counts are reported too."""
    from unmask.plugins.tasks.sudoku import tokens_to_digits

    task = build_task({"name": "sudoku", "cache_dir": str(tmp_path)})
    data = task.generate("test", 60, 3)
    g = task.groups(data)
    assert set(g) == {"clues", "technique"} and len(g["technique"]) == 60
    assert {"singles", "eliminations"} <= set(g["technique"]) <= {"singles", "eliminations"}
    puzzles = tokens_to_digits(np.where(data.given, data.inputs, 9))
    for p, kind in zip(puzzles, g["technique"]):
        assert _singles_only(p) == (kind == "singles"), kind
    hard = task.generate("hard", 5, 3)
    assert set(task.groups(hard)["technique"]) == {"beyond"}
