"""Tests for the Sudoku library: techniques, exact solver, generator, splits, parser, files, cache, augmentation."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.errors import InputError
from unmask.plugins.tasks import _sudoku_lib as L

A = 0x1FF
EASY = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
EASY_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."


def bits(*digits: int) -> int:
    return sum(1 << (d - 1) for d in digits)


def full() -> np.ndarray:
    return np.full(81, A, np.uint16)


def blank() -> np.ndarray:
    return np.zeros(81, np.int8)


SINGLES = {"naked_single": L.find_naked_single, "hidden_single": L.find_hidden_single}
ELIMS = {
    "naked_pair": L.find_naked_pair,
    "naked_triple": L.find_naked_triple,
    "locked_candidates": L.find_locked_candidates,
    "xy_wing": L.find_xy_wing,
    "unique_rectangle": L.find_unique_rectangle,
}


def firing(grid: np.ndarray, cands: np.ndarray) -> list[str]:
    """Which techniques make progress on (copies of) this position, in solver order."""
    out = []
    for name in L.TECHNIQUES:
        if name in SINGLES:
            ok = SINGLES[name](grid.copy(), cands.copy())
        else:
            ok = ELIMS[name](cands.copy())
        if ok:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Techniques on hand-made candidate positions
# ---------------------------------------------------------------------------------------------------------------
def test_naked_single_places_and_updates_peers():
    g, c = blank(), full()
    c[40] = bits(5)
    assert firing(g, c) == ["naked_single"]
    before = c.copy()
    assert L.find_naked_single(g, c)
    assert g[40] == 5 and (g != 0).sum() == 1
    assert c[40] == 0
    peers = np.flatnonzero(L._IS_PEER[40])
    assert len(peers) == 20
    assert (c[peers] == A ^ bits(5)).all()
    others = np.setdiff1d(np.arange(81), np.append(peers, 40))
    assert (c[others] == before[others]).all()
    assert not L.find_naked_single(g, c)


def test_hidden_single_places_digit_with_one_cell_in_row():
    g, c = blank(), full()
    row4 = [36, 37, 38, 39, 41, 42, 43, 44]
    c[row4] &= A ^ bits(7)  # 7 can only go to r5c5 (cell 40) in row 5
    assert firing(g, c)[0] == "hidden_single" and "naked_single" not in firing(g, c)
    assert L.find_hidden_single(g, c)
    assert g[40] == 7 and (g != 0).sum() == 1 and c[40] == 0
    col4_box4 = [4, 13, 22, 31, 49, 58, 67, 76, 30, 32, 48, 50]
    assert (c[col4_box4] == A ^ bits(7)).all()
    assert (c[row4] == A ^ bits(7)).all()


def test_naked_pair_eliminates_from_one_unit_per_step():
    c = full()
    c[0] = c[1] = bits(1, 2)  # r1c1, r1c2 = {1,2}: row 1 and box 1
    assert firing(blank(), c) == ["naked_pair"]
    assert L.find_naked_pair(c)
    exp = full()
    exp[0] = exp[1] = bits(1, 2)
    exp[2:9] = A ^ bits(1, 2)  # first unit found: row 1
    assert (c == exp).all()
    assert L.find_naked_pair(c)  # next step: box 1
    exp[[9, 10, 11, 18, 19, 20]] = A ^ bits(1, 2)
    assert (c == exp).all()
    assert not L.find_naked_pair(c)


def test_naked_triple():
    c = full()
    c[0], c[3], c[6] = bits(1, 2), bits(2, 3), bits(1, 2, 3)  # row 1, three different boxes
    assert firing(blank(), c) == ["naked_triple"]
    assert L.find_naked_triple(c)
    exp = full()
    exp[0], exp[3], exp[6] = bits(1, 2), bits(2, 3), bits(1, 2, 3)
    exp[[1, 2, 4, 5, 7, 8]] = A ^ bits(1, 2, 3)
    assert (c == exp).all()
    assert not L.find_naked_triple(c)


def test_locked_candidates_pointing():
    c = full()
    c[[9, 10, 11, 18, 19, 20]] &= A ^ bits(5)  # in box 1, digit 5 only in row 1
    assert firing(blank(), c) == ["locked_candidates"]
    assert L.find_locked_candidates(c)
    exp = full()
    exp[[9, 10, 11, 18, 19, 20]] = A ^ bits(5)
    exp[3:9] = A ^ bits(5)  # removed from row 1 outside box 1
    assert (c == exp).all()
    assert not L.find_locked_candidates(c)


def test_locked_candidates_claiming():
    c = full()
    c[[36, 37, 38, 42, 43, 44]] &= A ^ bits(3)  # in row 5, digit 3 only in box 5
    assert firing(blank(), c) == ["locked_candidates"]
    assert L.find_locked_candidates(c)
    exp = full()
    exp[[36, 37, 38, 42, 43, 44]] = A ^ bits(3)
    exp[[30, 31, 32, 48, 49, 50]] = A ^ bits(3)  # removed from box 5 outside row 5
    assert (c == exp).all()
    assert not L.find_locked_candidates(c)


def test_xy_wing():
    c = full()
    c[0], c[4], c[36] = bits(1, 2), bits(1, 3), bits(2, 3)  # pivot r1c1, pincers r1c5 and r5c1, z = 3
    assert firing(blank(), c) == ["xy_wing"]
    assert L.find_xy_wing(c)
    exp = full()
    exp[0], exp[4], exp[36] = bits(1, 2), bits(1, 3), bits(2, 3)
    exp[40] = A ^ bits(3)  # r5c5 sees both pincers
    assert (c == exp).all()
    assert not L.find_xy_wing(c)


def test_unique_rectangle_type1():
    c = full()
    # a position where the pairs' own eliminations are already done
    c[[1, 2, 4, 5, 6, 7, 8, 18, 27, 36, 45, 54, 63, 72, 10, 11, 19, 20]] = A ^ bits(1, 2)
    c[0] = c[3] = c[9] = bits(1, 2)  # r1c1, r1c4, r2c1 = {1,2}: rows 1-2, columns 1 and 4, boxes 1 and 2
    c[12] = bits(1, 2, 5, 7)
    assert firing(blank(), c) == ["unique_rectangle"]
    exp = c.copy()
    assert L.find_unique_rectangle(c)
    exp[12] = bits(5, 7)
    assert (c == exp).all()
    assert not L.find_unique_rectangle(c)


def test_unique_rectangle_needs_two_boxes():
    c = full()
    c[0] = c[1] = c[9] = bits(1, 2)  # rows 1-2, columns 1-2: all in box 1, not a unique rectangle
    c[10] = bits(1, 2, 5)
    assert not L.find_unique_rectangle(c)


def test_technique_inputs_are_checked():
    with pytest.raises(ValueError):
        L.find_naked_pair(np.full(81, A, np.int64))
    with pytest.raises(ValueError):
        L.find_naked_single(np.zeros(81, np.int64), full())


def test_candidates():
    p = L.parse_puzzle(EASY)
    c = L.candidates(p)
    assert c.dtype == np.uint16 and c[0] == 0
    # r1c3: row has 3,5,7; column has 8; box has 3,5,6,8,9 -> {1,2,4}
    assert c[2] == bits(1, 2, 4)


def test_techniques_are_sound_on_generated_puzzles():
    """Applying the solver step by step never removes the true digit of a cell."""
    puzzles, solutions = L.generate_puzzles(40, 11)
    for p, s in zip(puzzles, solutions):
        g = p.copy()
        c = L.candidates(g)
        for _ in range(500):
            if L.find_naked_single(g, c) or L.find_hidden_single(g, c):
                pass
            elif not any(f(c) for f in ELIMS.values()):
                break
            blanks = g == 0
            assert (g[~blanks] == s[~blanks]).all()
            assert ((c[blanks].astype(np.int64) >> (s[blanks].astype(np.int64) - 1)) & 1).all()


# ---------------------------------------------------------------------------------------------------------------
# Step solver
# ---------------------------------------------------------------------------------------------------------------
def test_step_solve_easy_puzzle():
    p = L.parse_puzzle(EASY)
    r = L.step_solve(p)
    assert r.solved
    assert "".join(map(str, r.grid)) == EASY_SOLUTION
    assert r.order.dtype == np.int16
    assert sorted(r.order.tolist()) == np.flatnonzero(p == 0).tolist()
    assert set(r.techniques) == set(L.TECHNIQUES)
    assert r.techniques["naked_single"] + r.techniques["hidden_single"] == len(r.order)
    assert (p == L.parse_puzzle(EASY)).all()  # input not modified


def test_step_solve_hard_puzzle_gets_stuck():
    p = L.parse_puzzle(ESCARGOT)
    assert L.count_solutions(p) == 1
    r = L.step_solve(p)
    assert not r.solved
    sol = L.solve(p)
    filled = r.grid != 0
    assert (r.grid[filled] == sol[filled]).all()
    assert len(r.order) == int(filled.sum() - (p != 0).sum())


def test_step_solve_batch_matches_single():
    puzzles, _ = L.generate_puzzles(30, 5)
    puzzles = np.concatenate([puzzles, L.parse_puzzle(EASY)[None], L.parse_puzzle(ESCARGOT)[None]])
    solved, order = L.step_solve_batch(puzzles)
    assert solved.shape == (32,) and order.shape == (32, 81) and order.dtype == np.int16
    assert solved[-2] and not solved[-1]
    for i, p in enumerate(puzzles):
        r = L.step_solve(p)
        assert r.solved == solved[i]
        n = len(r.order)
        assert (order[i, :n] == r.order).all() and (order[i, n:] == -1).all()


def test_step_solver_rejects_invalid_full_grid():
    g = L.parse_puzzle(EASY_SOLUTION)
    g[[0, 1]] = g[[1, 0]]  # full grid, columns 1 and 2 now repeat a digit
    r = L.step_solve(g)
    assert not r.solved


# ---------------------------------------------------------------------------------------------------------------
# Exact solver
# ---------------------------------------------------------------------------------------------------------------
def test_count_and_solve():
    p = L.parse_puzzle(EASY)
    assert L.count_solutions(p) == 1
    assert "".join(map(str, L.solve(p))) == EASY_SOLUTION
    assert L.count_solutions(blank()) == 2
    assert L.count_solutions(blank(), limit=5) == 5
    assert L.is_valid_solution(L.solve(blank()))
    conflict = blank()
    conflict[[0, 1]] = 4
    assert L.count_solutions(conflict) == 0 and L.solve(conflict) is None
    dead = blank()  # r1c1 has no candidate: 1-8 in row 1, 9 in column 1
    dead[1:9] = np.arange(1, 9)
    dead[27] = 9
    assert L.count_solutions(dead) == 0 and L.solve(dead) is None
    assert L.check_solvable(dead) == (None, False)
    sol, unique = L.check_solvable(p)
    assert unique and "".join(map(str, sol)) == EASY_SOLUTION
    sol, unique = L.check_solvable(blank())
    assert not unique and L.is_valid_solution(sol)


def test_solve_accepts_9x9():
    p = L.parse_puzzle(EASY).reshape(9, 9)
    assert L.count_solutions(p) == 1
    with pytest.raises(ValueError):
        L.count_solutions(np.zeros(80, np.int8))


# ---------------------------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------------------------
def test_generate_solutions():
    g = L.generate_solutions(50, 3)
    assert g.shape == (50, 81) and g.dtype == np.int8
    assert L.valid_grids(g).all()
    assert len({row.tobytes() for row in g}) == 50
    assert (L.generate_solutions(50, 3) == g).all()
    assert not (L.generate_solutions(50, 4) == g).all()


def test_generate_puzzles_unique_valid_minimal():
    puzzles, solutions = L.generate_puzzles(40, 7)
    assert puzzles.shape == solutions.shape == (40, 81)
    assert puzzles.dtype == solutions.dtype == np.int8
    assert L.valid_grids(solutions).all()
    assert ((puzzles == 0) | (puzzles == solutions)).all()
    clues = (puzzles != 0).sum(axis=1)
    assert (clues >= 17).all() and clues.mean() < 30
    for p, s in zip(puzzles, solutions):
        assert L.count_solutions(p) == 1
        assert (L.solve(p) == s).all()
    for p in puzzles[:3]:  # minimal: every clue is needed
        for c in np.flatnonzero(p):
            q = p.copy()
            q[c] = 0
            assert L.count_solutions(q) == 2


def test_generate_puzzles_deterministic_and_thread_independent():
    a = L.generate_puzzles(24, 99)
    b = L.generate_puzzles(24, 99)
    assert all((x == y).all() for x, y in zip(a, b))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        c = L.generate_puzzles(24, 99)
    finally:
        numba.set_num_threads(old)
    assert all((x == y).all() for x, y in zip(a, c))
    d = L.generate_puzzles(24, 100)
    assert not (a[0] == d[0]).all()


def test_generate_puzzles_clue_range():
    puzzles, solutions = L.generate_puzzles(30, 1, min_clues=30, max_clues=40, minimal=False)
    clues = (puzzles != 0).sum(axis=1)
    assert ((clues >= 30) & (clues <= 40)).all()
    assert len(set(clues.tolist())) > 1
    for p in puzzles:
        assert L.count_solutions(p) == 1
    p, _ = L.generate_puzzles(10, 2, min_clues=81, max_clues=81, minimal=False)
    assert (p != 0).all()
    with pytest.raises(ValueError):
        L.generate_puzzles(1, 0, min_clues=16)
    with pytest.raises(ValueError):
        L.generate_puzzles(1, 0, min_clues=40, max_clues=30)
    assert L.generate_puzzles(0, 0)[0].shape == (0, 81)


def test_generate_split():
    tr_p, tr_s, tr_o = L.generate_split(20, 3, "train")
    te_p, _, _ = L.generate_split(20, 3, "test")
    hd_p, hd_s, hd_o = L.generate_split(10, 3, "hard")
    assert tr_p.shape == (20, 81) and hd_p.shape == (10, 81) and tr_o.shape == (20, 81) and tr_o.dtype == np.int16
    keys = [{p.tobytes() for p in x} for x in (tr_p, te_p, hd_p)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    for p, s, o in zip(tr_p, tr_s, tr_o):
        r = L.step_solve(p)
        assert r.solved and (r.grid == s).all()
        n = int((p == 0).sum())
        assert sorted(o[:n].tolist()) == np.flatnonzero(p == 0).tolist() and (o[n:] == -1).all()
        assert L.count_solutions(p) == 1
    for p, s, o in zip(hd_p, hd_s, hd_o):
        r = L.step_solve(p)
        assert not r.solved
        assert L.count_solutions(p) == 1 and (L.solve(p) == s).all()
        n = len(r.order)
        assert (o[:n] == r.order).all() and (o[n:] == -1).all()
    # deterministic, and a smaller n is a prefix of a larger one
    p5, _, _ = L.generate_split(5, 3, "train")
    assert (p5 == tr_p[:5]).all()
    with pytest.raises(ValueError):
        L.generate_split(1, 0, "valid")


# ---------------------------------------------------------------------------------------------------------------
# Parsing and formatting
# ---------------------------------------------------------------------------------------------------------------
def test_parse_formats():
    p = L.parse_puzzle(EASY)
    assert p.dtype == np.int8 and p.shape == (81,)
    assert (L.parse_puzzle(EASY.replace(".", "0")) == p).all()
    lines = "\n".join(EASY[9 * r: 9 * r + 9] for r in range(9)) + "\n"
    assert (L.parse_puzzle(lines) == p).all()
    spaced = "\n".join(" ".join(EASY[9 * r: 9 * r + 9]) for r in range(9))
    assert (L.parse_puzzle("  " + spaced + "\n\n") == p).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (EASY[:80], "puzzle has 80 cells, expected 81"),
        (EASY + "1", "puzzle has 82 cells, expected 81"),
        ("", "puzzle has 0 cells, expected 81"),
        (EASY[:22] + "x" + EASY[23:], "bad character 'x' at row 3, column 5; use 1-9 for givens and 0 or . for blanks"),
        (EASY[:8] + "|" + EASY[9:], "bad character '|' at row 1, column 9"),
        ("5" + "." * 7 + "5" + "." * 72, "digit 5 appears twice in row 1"),
        ("." * 9 + "5" + "." * 7 + "5" + "." * 63, "digit 5 appears twice in row 2"),
        ("." * 6 + "7" + "." * 71 + "7" + ".." , "digit 7 appears twice in column 7"),  # r1c7 and r9c7
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(InputError) as e:
        L.parse_puzzle(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_parse_error_box_and_counts():
    g = ["."] * 81
    g[27] = g[47] = "5"  # r4c1 and r6c3: box 4, different rows and columns
    with pytest.raises(InputError, match=r"^digit 5 appears twice in box 4 \(rows 4-6, columns 1-3\)$"):
        L.parse_puzzle("".join(g))
    g = ["."] * 81
    g[0] = g[1] = g[2] = "9"
    with pytest.raises(InputError, match="digit 9 appears 3 times in row 1"):
        L.parse_puzzle("".join(g))
    with pytest.raises(InputError, match=r"puzzle has 80 cells, expected 81 \(9 rows of 9"):
        L.parse_puzzle("\n".join([EASY[:40], EASY[40:80]]))


def test_format_grid():
    text = L.format_grid(L.parse_puzzle(EASY))
    lines = text.splitlines()
    assert len(lines) == 11
    assert lines[0] == "5 3 . | . 7 . | . . ."
    assert lines[3] == "------+-------+------"
    assert lines[7] == "------+-------+------"
    assert lines[10] == ". . . | . 8 . | . 7 9"
    assert (L.parse_puzzle(text.replace("|", "").replace("-", "").replace("+", "")) == L.parse_puzzle(EASY)).all()


def test_valid_grids():
    s = L.parse_puzzle(EASY_SOLUTION)
    assert L.is_valid_solution(s)
    assert not L.is_valid_solution(L.parse_puzzle(EASY))
    bad = s.copy()
    bad[0], bad[1] = bad[1], bad[0]
    rolled = np.roll(s, 1)
    grids = np.stack([s, bad, rolled, np.zeros(81, np.int8), s])
    assert L.valid_grids(grids).tolist() == [True, False, False, False, True]
    latin = np.array([(r + c) % 9 + 1 for r in range(9) for c in range(9)], np.int8)  # rows/cols ok, boxes not
    assert not L.is_valid_solution(latin)
    assert L.valid_grids(np.zeros((0, 81), np.int8)).shape == (0,)


# ---------------------------------------------------------------------------------------------------------------
# Files and cache
# ---------------------------------------------------------------------------------------------------------------
def test_file_round_trip(tmp_path):
    puzzles, solutions = L.generate_puzzles(5, 21)
    path = tmp_path / "p.txt"
    L.write_puzzle_file(path, puzzles, solutions)
    p2, s2 = L.read_puzzle_file(path)
    assert (p2 == puzzles).all() and (s2 == solutions).all()
    L.write_puzzle_file(path, puzzles)
    p3, s3 = L.read_puzzle_file(str(path))
    assert (p3 == puzzles).all() and s3 is None
    # comments, blank lines, 0 blanks, trailing comments
    lines = [
        "# my puzzles",
        "",
        EASY.replace(".", "0") + "  # the Wikipedia one",
        "   ",
        EASY + "#no space",
        "# end",
    ]
    path.write_text("\n".join(lines) + "\n")
    p4, s4 = L.read_puzzle_file(path)
    assert p4.shape == (2, 81) and s4 is None
    assert (p4 == L.parse_puzzle(EASY)).all()
    path.write_text(f"{EASY},{EASY_SOLUTION} # with solution\n")
    p5, s5 = L.read_puzzle_file(path)
    assert "".join(map(str, s5[0])) == EASY_SOLUTION


def test_file_errors(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(f"# header\n{EASY}\n{EASY[:80]}\n")
    with pytest.raises(InputError, match=r"bad\.txt, line 3: puzzle has 80 cells"):
        L.read_puzzle_file(path)
    path.write_text(f"{EASY}\n\n{EASY[:4]}x{EASY[5:]}\n")
    with pytest.raises(InputError, match=r"line 3: bad character 'x' at row 1, column 5"):
        L.read_puzzle_file(path)
    path.write_text(f"{EASY},{EASY_SOLUTION}\n{EASY}\n")
    with pytest.raises(InputError, match=r"line 2: .*solution"):
        L.read_puzzle_file(path)
    wrong = EASY_SOLUTION[1:] + EASY_SOLUTION[0]
    path.write_text(f"{EASY},{wrong}\n")
    with pytest.raises(InputError, match=r"line 1: solution: digit 6 appears twice in row 1"):
        L.read_puzzle_file(path)
    path.write_text(f"{EASY},{EASY}\n")
    with pytest.raises(InputError, match=r"line 1: the solution has blanks"):
        L.read_puzzle_file(path)
    path.write_text(f"{EASY},{EASY_SOLUTION},{EASY_SOLUTION}\n")
    with pytest.raises(InputError, match="line 1: expected 'puzzle' or 'puzzle,solution'"):
        L.read_puzzle_file(path)
    other = L.solve(L.parse_puzzle(ESCARGOT))
    path.write_text(f"{EASY},{''.join(map(str, other))}\n")
    with pytest.raises(InputError, match=r"line 1: the solution disagrees with the given at row 1, column 1"):
        L.read_puzzle_file(path)
    path.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="no puzzles"):
        L.read_puzzle_file(path)
    with pytest.raises(InputError, match="cannot read puzzle file"):
        L.read_puzzle_file(tmp_path / "missing.txt")


def test_cache_round_trip(tmp_path):
    path = tmp_path / "c.npz"
    a = np.arange(81 * 3, dtype=np.int8).reshape(3, 81)
    o = np.full((3, 81), -1, np.int16)
    L.save_cache(path, puzzles=a, order=o)
    got = L.load_cache(path)
    assert set(got) == {"puzzles", "order"}
    assert (got["puzzles"] == a).all() and got["order"].dtype == np.int16
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.npz"]  # no temp file left
    L.save_cache(path, puzzles=a[:1])  # overwrite
    assert L.load_cache(path)["puzzles"].shape == (1, 81)
    with pytest.raises(ValueError):
        L.save_cache(path, bad=np.array([{"a": 1}], dtype=object))
    assert L.load_cache(path)["puzzles"].shape == (1, 81)  # untouched by the failed save
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="cannot read cache file"):
        L.load_cache(tmp_path / "pickled.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError):
        L.load_cache(tmp_path / "junk.npz")


# ---------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------
_AUG_P, _AUG_S = None, None


def _aug_data():
    global _AUG_P, _AUG_S
    if _AUG_P is None:
        _AUG_P, _AUG_S = L.generate_puzzles(16, 42)
    return _AUG_P, _AUG_S


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_augment_preserves_validity(seed):
    p, s = _aug_data()
    rng = np.random.default_rng(seed)
    p2, s2 = L.augment(p, s, rng)
    assert p2.shape == p.shape and p2.dtype == p.dtype and s2.dtype == s.dtype
    assert L.valid_grids(s2).all()
    assert ((p2 == 0) | (p2 == s2)).all()  # givens agree with the solution
    assert ((p2 == 0).sum(axis=1) == (p == 0).sum(axis=1)).all()
    for i in range(0, len(p), 4):  # still a unique-solution puzzle, and its solution is s2
        assert (L.solve(p2[i]) == s2[i]).all() and L.count_solutions(p2[i]) == 1
    # each row's digit histogram is a relabelling: same multiset of counts
    for a, b in zip(p, p2):
        assert sorted(np.bincount(a, minlength=10)[1:]) == sorted(np.bincount(b, minlength=10)[1:])


def test_augment_is_random_per_row():
    s = np.repeat(L.parse_puzzle(EASY_SOLUTION)[None], 64, axis=0)
    p = np.repeat(L.parse_puzzle(EASY)[None], 64, axis=0)
    p2, s2 = L.augment(p, s, np.random.default_rng(0))
    assert len({x.tobytes() for x in s2}) > 60
    assert L.valid_grids(s2).all() and ((p2 == 0) | (p2 == s2)).all()
    # blanks stay 0, and the blank pattern moves like the cells
    assert ((p2 == 0).sum(axis=1) == (p[0] == 0).sum()).all()
    p3, s3 = L.augment(p, s, np.random.default_rng(0))
    assert (p3 == p2).all() and (s3 == s2).all()
    with pytest.raises(ValueError):
        L.augment(p, s[:3], np.random.default_rng(0))


def _rounds_one_by_one(puzzle: np.ndarray, solution: np.ndarray) -> int:
    """singles_rounds written cell by cell, the obvious way."""
    g = puzzle.astype(int).copy()
    idx = np.arange(81)
    units = [idx // 9, idx % 9, (idx // 27) * 3 + (idx % 9) // 3]
    rounds = 0
    while (g == 0).any():
        rounds += 1
        cand = {i: {d for d in range(1, 10)} - {g[j] for u in units for j in idx[u == u[i]]} for i in idx if g[i] == 0}
        fill = {i: next(iter(c)) for i, c in cand.items() if len(c) == 1}
        for u in units:
            for k in range(9):
                for d in range(1, 10):
                    where = [i for i in idx[u == k] if i in cand and d in cand[i]]
                    if len(where) == 1:
                        fill[where[0]] = d
        if not fill:
            first = int(np.argmax(g == 0))
            fill = {first: int(solution[first])}
        for i, d in fill.items():
            g[i] = d
    return rounds


def test_singles_rounds_matches_the_cell_by_cell_definition():
    solved = np.array([int(c) for c in EASY_SOLUTION], np.int8)
    easy = np.array([0 if c == "." else int(c) for c in EASY], np.int8)
    esc = np.array([0 if c == "." else int(c) for c in ESCARGOT], np.int8)
    esc_sol = L.solve(esc)
    one_row = solved.copy()
    one_row[9:18] = 0  # every blank is forced by its column: one round
    puzzles = np.stack([solved, one_row, easy, esc])
    solutions = np.stack([solved, solved, solved, esc_sol])
    got = L.singles_rounds(puzzles, solutions)
    assert got[0] == 0 and got[1] == 1
    assert list(got) == [_rounds_one_by_one(p, s) for p, s in zip(puzzles, solutions)]
    assert got[3] > got[2]  # the hard puzzle needs more rounds (and guessed cells)
