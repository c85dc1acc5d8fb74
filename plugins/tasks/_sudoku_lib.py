"""Sudoku 9x9 library: generation, exact solving, the paper's 7-technique step solver, parsing, files, augmentation.

Pure numpy + numba (no torch). A grid is an ``int8`` array of shape ``(81,)`` (row-major, cell = 9*row + col),
values 1..9 and 0 = blank; a batch is ``(N, 81)``. Candidates are ``(81,)`` ``uint16`` bitmasks (bit d-1 = digit
d), 0 for filled cells.

Generation (:func:`generate_puzzles`): a random full grid (randomised backtracking), then cells are removed in a
random order, keeping a removal only when the solution stays unique. Uniqueness after removing cell c (value v) is
one search for a solution with c != v (stops at the first). Each puzzle has its own seed derived from the master
seed (``numpy.random.SeedSequence``), so results do not depend on the thread count.

Step solver (:func:`step_solve`): the 7 techniques of the paper's data filter (Shah et al. 2024), tried in this
order, the first that makes progress is applied once, then start again: naked (lone) single, hidden single, naked
pair, naked triple, locked candidates (pointing, then claiming), XY-wing, unique rectangle (type 1). Singles place
one value; the others eliminate candidates of one pattern instance.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit, prange

from unmask.core.errors import InputError
from unmask.plugins.tasks._rng import rand_below as _rand_below
from unmask.plugins.tasks._threads import torch_threads

__all__ = [
    "CACHE_VERSION",
    "TECHNIQUES",
    "technique_classes",
    "SPLITS",
    "StepResult",
    "generate_solutions",
    "generate_puzzles",
    "generate_split",
    "count_solutions",
    "solve",
    "check_solvable",
    "candidates",
    "find_naked_single",
    "find_hidden_single",
    "find_naked_pair",
    "find_naked_triple",
    "find_locked_candidates",
    "find_xy_wing",
    "find_unique_rectangle",
    "step_solve",
    "step_solve_batch",
    "parse_puzzle",
    "format_grid",
    "is_valid_solution",
    "valid_grids",
    "read_puzzle_file",
    "write_puzzle_file",
    "save_cache",
    "load_cache",
    "augment",
]

CACHE_VERSION = 1
"""Bump when generation changes so cached data sets are regenerated."""

TECHNIQUES = (
    "naked_single",
    "hidden_single",
    "naked_pair",
    "naked_triple",
    "locked_candidates",
    "xy_wing",
    "unique_rectangle",
)
"""The step solver's techniques, in the order they are tried."""

SPLITS = ("train", "test", "hard")

# --------------------------------------------------------------------------------------------------------------
# Tables (global arrays are compile-time constants for numba)
# --------------------------------------------------------------------------------------------------------------
_ALL = 0x1FF
_CELL = np.arange(81)
_ROW = (_CELL // 9).astype(np.int64)
_COL = (_CELL % 9).astype(np.int64)
_BOX = ((_ROW // 3) * 3 + _COL // 3).astype(np.int64)
_UNITS = np.array(
    [[9 * r + c for c in range(9)] for r in range(9)]
    + [[9 * r + c for r in range(9)] for c in range(9)]
    + [[9 * (3 * (b // 3) + i // 3) + 3 * (b % 3) + i % 3 for i in range(9)] for b in range(9)],
    dtype=np.int64,
)  # 27 units: rows 0-8, columns 9-17, boxes 18-26
_IS_PEER = (
    (_ROW[:, None] == _ROW[None, :]) | (_COL[:, None] == _COL[None, :]) | (_BOX[:, None] == _BOX[None, :])
) & (_CELL[:, None] != _CELL[None, :])
_PEERS = np.array([np.flatnonzero(_IS_PEER[c]) for c in range(81)], dtype=np.int64)  # (81, 20)
_POP = np.array([bin(m).count("1") for m in range(512)], dtype=np.int64)
_LOWDIG = np.array([0] + [(m & -m).bit_length() for m in range(1, 512)], dtype=np.int64)  # lowest digit in mask
_BIT = np.array([0] + [1 << (d - 1) for d in range(1, 10)], dtype=np.int64)  # digit -> bit (0 -> 0)

_SPLIT_STREAM = {"train": 0x7A1, "test": 0x7E5, "hard": 0x4A2D}
_MAX_ATTEMPTS = 1000  # full grids tried per puzzle before giving up on max_clues
_CHUNK = 512  # generate_split chunk size (fixed, so a smaller n gives a prefix of a larger n)


# --------------------------------------------------------------------------------------------------------------
# Exact search: bitmask backtracking, naked + hidden single propagation, most-constrained cell first
# --------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _search(grid, limit, excl_cell, excl_bit, out, randomize, rng):
    """Count solutions of ``grid`` up to ``limit``; the first one found goes to ``out``.

    ``excl_cell``/``excl_bit``: that cell may not take that digit (-1/0 for none). ``randomize``: try branch
    digits in random order (``rng`` state), used to make random full grids. Returns 0 on conflicting givens.
    """
    g = grid.copy()
    rows = np.zeros(9, np.int64)
    cols = np.zeros(9, np.int64)
    boxes = np.zeros(9, np.int64)
    for c in range(81):
        v = g[c]
        if v != 0:
            b = _BIT[v]
            r = _ROW[c]
            co = _COL[c]
            bx = _BOX[c]
            if ((rows[r] | cols[co] | boxes[bx]) & b) != 0:
                return 0
            rows[r] |= b
            cols[co] |= b
            boxes[bx] |= b
    cand = np.zeros(81, np.int64)
    trail = np.empty(81, np.int64)
    fcell = np.empty(82, np.int64)
    frem = np.empty(82, np.int64)
    ftrail = np.empty(82, np.int64)
    tlen = 0
    depth = 0
    count = 0
    while True:
        # ---- propagate singles; status 1 = branch on best, 0 = solved, -1 = contradiction
        status = 1
        best = -1
        while True:
            progress = False
            dead = False
            nblank = 0
            bestn = 10
            best = -1
            for c in range(81):
                if g[c] != 0:
                    cand[c] = 0
                    continue
                m = _ALL & ~(rows[_ROW[c]] | cols[_COL[c]] | boxes[_BOX[c]])
                if c == excl_cell:
                    m &= ~excl_bit
                if m == 0:
                    dead = True
                    break
                n = _POP[m]
                if n == 1:
                    g[c] = _LOWDIG[m]
                    rows[_ROW[c]] |= m
                    cols[_COL[c]] |= m
                    boxes[_BOX[c]] |= m
                    trail[tlen] = c
                    tlen += 1
                    cand[c] = 0
                    progress = True
                else:
                    cand[c] = m
                    nblank += 1
                    if n < bestn:
                        bestn = n
                        best = c
            if dead:
                status = -1
                break
            if progress:
                continue
            if nblank == 0:
                status = 0
                break
            # hidden singles (cand may be stale within this pass: every deduction stays sound, see checks)
            for u in range(27):
                once = 0
                twice = 0
                for k in range(9):
                    m = cand[_UNITS[u, k]]
                    twice |= once & m
                    once |= m
                if u < 9:
                    placed = rows[u]
                elif u < 18:
                    placed = cols[u - 9]
                else:
                    placed = boxes[u - 18]
                if (once | placed) != _ALL:
                    dead = True
                    break
                h = once & ~twice & ~placed
                while h != 0:
                    b = h & -h
                    h ^= b
                    cell = -1
                    for k in range(9):
                        cc = _UNITS[u, k]
                        if (cand[cc] & b) != 0:
                            cell = cc
                            break
                    if g[cell] != 0 or ((rows[_ROW[cell]] | cols[_COL[cell]] | boxes[_BOX[cell]]) & b) != 0:
                        dead = True
                        break
                    g[cell] = _LOWDIG[b]
                    rows[_ROW[cell]] |= b
                    cols[_COL[cell]] |= b
                    boxes[_BOX[cell]] |= b
                    trail[tlen] = cell
                    tlen += 1
                    progress = True
                if dead:
                    break
            if dead:
                status = -1
                break
            if not progress:
                status = 1
                break
        if status == 0:
            count += 1
            if count == 1:
                out[:] = g
            if count >= limit:
                return count
        elif status == 1:
            fcell[depth] = best
            frem[depth] = cand[best]
            ftrail[depth] = tlen
            depth += 1
        # ---- advance: undo to the top frame and try its next digit, popping exhausted frames
        while True:
            if depth == 0:
                return count
            d = depth - 1
            start = ftrail[d]
            while tlen > start:
                tlen -= 1
                c = trail[tlen]
                b = _BIT[g[c]]
                rows[_ROW[c]] ^= b
                cols[_COL[c]] ^= b
                boxes[_BOX[c]] ^= b
                g[c] = 0
            rem = frem[d]
            if rem == 0:
                depth -= 1
                continue
            if randomize:
                k = _rand_below(rng, _POP[rem])
                b = rem & -rem
                for _ in range(k):
                    rem2 = rem ^ b
                    rem = rem2
                    b = rem & -rem
                frem[d] = frem[d] ^ b
            else:
                b = rem & -rem
                frem[d] = rem ^ b
            c = fcell[d]
            g[c] = _LOWDIG[b]
            rows[_ROW[c]] |= b
            cols[_COL[c]] |= b
            boxes[_BOX[c]] |= b
            trail[tlen] = c
            tlen += 1
            break


@njit(cache=True, nogil=True)
def _random_full_grid(rng, out):
    # the three diagonal boxes are independent: fill them with random permutations, then search the rest
    g = np.zeros(81, np.int8)
    digits = np.arange(1, 10)
    for bx in (0, 4, 8):
        for i in range(8, 0, -1):
            j = _rand_below(rng, i + 1)
            t = digits[i]
            digits[i] = digits[j]
            digits[j] = t
        for k in range(9):
            g[_UNITS[18 + bx, k]] = digits[k]
    _search(g, 1, -1, 0, out, True, rng)


@njit(cache=True, nogil=True)
def _dig(sol, rng, stop_at, puzzle):
    """Remove cells of ``sol`` in random order while the solution stays unique and clues > stop_at."""
    g = sol.copy()
    perm = np.arange(81)
    for i in range(80, 0, -1):
        j = _rand_below(rng, i + 1)
        t = perm[i]
        perm[i] = perm[j]
        perm[j] = t
    scratch = np.empty(81, np.int8)
    clues = 81
    for i in range(81):
        if clues <= stop_at:
            break
        c = perm[i]
        v = g[c]
        g[c] = 0
        if _search(g, 1, c, _BIT[v], scratch, False, rng) > 0:
            g[c] = v  # another solution exists without this clue: keep it
        else:
            clues -= 1
    puzzle[:] = g
    return clues


@njit(cache=True, nogil=True)
def _gen_one(seed, min_clues, max_clues, minimal, puzzle, solution):
    rng = np.empty(1, np.uint64)
    rng[0] = seed
    for _ in range(_MAX_ATTEMPTS):
        _random_full_grid(rng, solution)
        if minimal:
            stop_at = min_clues
        else:
            stop_at = min_clues + _rand_below(rng, max_clues - min_clues + 1)
        clues = _dig(solution, rng, stop_at, puzzle)
        if clues <= max_clues:
            return True
    return False


@njit(cache=True, nogil=True, parallel=True)
def _gen_puzzles_par(seeds, min_clues, max_clues, minimal, puzzles, solutions, ok):
    for i in prange(seeds.shape[0]):
        ok[i] = _gen_one(seeds[i], min_clues, max_clues, minimal, puzzles[i], solutions[i])


@njit(cache=True, nogil=True, parallel=True)
def _gen_solutions_par(seeds, out):
    for i in prange(seeds.shape[0]):
        rng = np.empty(1, np.uint64)
        rng[0] = seeds[i]
        _random_full_grid(rng, out[i])


# --------------------------------------------------------------------------------------------------------------
# Step solver techniques (numba kernels). Singles return the placed cell (-1 none, -2 a blank cell without
# candidates); eliminations return True when they removed at least one candidate.
# --------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _candidates(grid, cands):
    for c in range(81):
        if grid[c] != 0:
            cands[c] = 0
            continue
        used = 0
        for k in range(20):
            used |= _BIT[grid[_PEERS[c, k]]]
        cands[c] = _ALL & ~used


@njit(cache=True, nogil=True)
def _place(grid, cands, c, d):
    grid[c] = d
    keep = _ALL ^ _BIT[d]
    cands[c] = 0
    for k in range(20):
        p = _PEERS[c, k]
        cands[p] = cands[p] & keep


@njit(cache=True, nogil=True)
def _naked_single(grid, cands):
    for c in range(81):
        if grid[c] == 0:
            m = cands[c]
            if m == 0:
                return -2
            if _POP[m] == 1:
                _place(grid, cands, c, _LOWDIG[m])
                return c
    return -1


@njit(cache=True, nogil=True)
def _hidden_single(grid, cands):
    for u in range(27):
        once = np.int64(0)  # digit bits seen in the unit at least once / at least twice
        twice = np.int64(0)
        for k in range(9):
            m = np.int64(cands[_UNITS[u, k]])
            twice |= once & m
            once |= m
        h = once & ~twice
        if h != 0:
            b = h & -h
            for k in range(9):
                c = _UNITS[u, k]
                if (cands[c] & b) != 0:
                    _place(grid, cands, c, _LOWDIG[b])
                    return c
    return -1


@njit(cache=True, nogil=True)
def _eliminate_in_unit(cands, u, m, a, b, c):
    """Remove bits ``m`` from the cells of unit ``u`` other than a, b, c; True if anything changed."""
    changed = False
    keep = _ALL ^ m
    for k in range(9):
        x = _UNITS[u, k]
        if x != a and x != b and x != c and (cands[x] & m) != 0:
            cands[x] = cands[x] & keep
            changed = True
    return changed


@njit(cache=True, nogil=True)
def _naked_pair(cands):
    for u in range(27):
        for i in range(9):
            a = _UNITS[u, i]
            m = np.int64(cands[a])
            if _POP[m] != 2:
                continue
            for j in range(i + 1, 9):
                b = _UNITS[u, j]
                if cands[b] != m:
                    continue
                if _eliminate_in_unit(cands, u, m, a, b, -1):
                    return True
    return False


@njit(cache=True, nogil=True)
def _naked_triple(cands):
    for u in range(27):
        for i in range(9):
            a = _UNITS[u, i]
            ma = np.int64(cands[a])
            if _POP[ma] < 2 or _POP[ma] > 3:
                continue
            for j in range(i + 1, 9):
                b = _UNITS[u, j]
                mb = np.int64(cands[b])
                if _POP[mb] < 2 or _POP[mb] > 3 or _POP[ma | mb] > 3:
                    continue
                for k in range(j + 1, 9):
                    c = _UNITS[u, k]
                    mc = np.int64(cands[c])
                    if _POP[mc] < 2 or _POP[mc] > 3:
                        continue
                    m = ma | mb | mc
                    if _POP[m] != 3:
                        continue
                    if _eliminate_in_unit(cands, u, m, a, b, c):
                        return True
    return False


@njit(cache=True, nogil=True)
def _locked_candidates(cands):
    # pointing: a digit's candidates in a box all lie on one row (column) -> remove it from the rest of that line
    for bx in range(9):
        for d in range(1, 10):
            bit = _BIT[d]
            rmask = 0
            cmask = 0
            for k in range(9):
                c = _UNITS[18 + bx, k]
                if (cands[c] & bit) != 0:
                    rmask |= 1 << _ROW[c]
                    cmask |= 1 << _COL[c]
            if rmask == 0:
                continue
            if _POP[rmask] == 1:
                r = _LOWDIG[rmask] - 1
                changed = False
                for k in range(9):
                    c = 9 * r + k
                    if _BOX[c] != bx and (cands[c] & bit) != 0:
                        cands[c] = cands[c] & (_ALL ^ bit)
                        changed = True
                if changed:
                    return True
            if _POP[cmask] == 1:
                co = _LOWDIG[cmask] - 1
                changed = False
                for k in range(9):
                    c = 9 * k + co
                    if _BOX[c] != bx and (cands[c] & bit) != 0:
                        cands[c] = cands[c] & (_ALL ^ bit)
                        changed = True
                if changed:
                    return True
    # claiming: a digit's candidates in a row (column) all lie in one box -> remove it from the rest of the box
    for u in range(18):
        for d in range(1, 10):
            bit = _BIT[d]
            bmask = 0
            for k in range(9):
                c = _UNITS[u, k]
                if (cands[c] & bit) != 0:
                    bmask |= 1 << _BOX[c]
            if _POP[bmask] != 1:
                continue
            bx = _LOWDIG[bmask] - 1
            changed = False
            for k in range(9):
                c = _UNITS[18 + bx, k]
                on_line = _ROW[c] == u if u < 9 else _COL[c] == u - 9
                if not on_line and (cands[c] & bit) != 0:
                    cands[c] = cands[c] & (_ALL ^ bit)
                    changed = True
            if changed:
                return True
    return False


@njit(cache=True, nogil=True)
def _xy_wing(cands):
    # pivot {x,y}; pincers {x,z} and {y,z} that see the pivot -> remove z from cells that see both pincers
    for p in range(81):
        mp = np.int64(cands[p])
        if _POP[mp] != 2:
            continue
        for i in range(20):
            a = _PEERS[p, i]
            ma = np.int64(cands[a])
            if _POP[ma] != 2 or ma == mp or _POP[ma & mp] != 1:
                continue
            z = ma & ~mp
            need = (mp & ~ma) | z
            for j in range(20):
                b = _PEERS[p, j]
                if b == a or cands[b] != need:
                    continue
                changed = False
                for k in range(20):
                    c = _PEERS[a, k]
                    if c != b and c != p and _IS_PEER[c, b] and (cands[c] & z) != 0:
                        cands[c] = cands[c] & (_ALL ^ z)
                        changed = True
                if changed:
                    return True
    return False


@njit(cache=True, nogil=True)
def _unique_rectangle(cands):
    # type 1: rectangle over 2 rows, 2 columns, 2 boxes; three corners {a,b}, the fourth {a,b,+more}
    # -> the fourth cannot be a or b (else the puzzle would have two solutions)
    cells = np.empty(4, np.int64)
    for r1 in range(9):
        for r2 in range(r1 + 1, 9):
            same_band = (r1 // 3) == (r2 // 3)
            for c1 in range(9):
                for c2 in range(c1 + 1, 9):
                    if same_band == ((c1 // 3) == (c2 // 3)):
                        continue
                    cells[0] = 9 * r1 + c1
                    cells[1] = 9 * r1 + c2
                    cells[2] = 9 * r2 + c1
                    cells[3] = 9 * r2 + c2
                    for t in range(4):
                        m = np.int64(cands[cells[t]])
                        if _POP[m] != 2:
                            continue
                        neq = 0
                        other = -1
                        for s in range(4):
                            if cands[cells[s]] == m:
                                neq += 1
                            else:
                                other = cells[s]
                        if neq == 3:
                            mo = np.int64(cands[other])
                            if (mo & m) == m:
                                cands[other] = mo & (_ALL ^ m)
                                return True
                        break
    return False


@njit(cache=True, nogil=True)
def _step_core(grid, order, counts):
    """Run the step solver on ``grid`` (in place). Returns (solved, number of placements written to order)."""
    cands = np.empty(81, np.uint16)
    _candidates(grid, cands)
    blanks = 0
    for c in range(81):
        if grid[c] == 0:
            blanks += 1
    n = 0
    while blanks > 0:
        c = _naked_single(grid, cands)
        if c == -2:
            break
        if c >= 0:
            order[n] = c
            n += 1
            blanks -= 1
            counts[0] += 1
            continue
        c = _hidden_single(grid, cands)
        if c >= 0:
            order[n] = c
            n += 1
            blanks -= 1
            counts[1] += 1
            continue
        if _naked_pair(cands):
            counts[2] += 1
        elif _naked_triple(cands):
            counts[3] += 1
        elif _locked_candidates(cands):
            counts[4] += 1
        elif _xy_wing(cands):
            counts[5] += 1
        elif _unique_rectangle(cands):
            counts[6] += 1
        else:
            break
    if blanks > 0:
        return False, n
    for u in range(27):  # a finished grid is only "solved" if it is valid
        m = 0
        for k in range(9):
            m |= _BIT[grid[_UNITS[u, k]]]
        if m != _ALL:
            return False, n
    return True, n


@njit(cache=True, nogil=True, parallel=True)
def _step_batch_par(puzzles, solved, order):
    for i in prange(puzzles.shape[0]):
        g = puzzles[i].copy()
        counts = np.zeros(7, np.int64)
        ok, _ = _step_core(g, order[i], counts)
        solved[i] = ok


# --------------------------------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------------------------------
def _grid(puzzle: np.ndarray) -> np.ndarray:
    g = np.asarray(puzzle)
    if g.shape == (9, 9):
        g = g.reshape(81)
    if g.shape != (81,):
        raise ValueError(f"a sudoku grid has shape (81,) or (9, 9), got {g.shape}")
    if g.size and (g.min() < 0 or g.max() > 9):
        raise ValueError("sudoku grid values must be 0 (blank) or 1-9")
    return np.ascontiguousarray(g, dtype=np.int8)


def _batch(grids: np.ndarray) -> np.ndarray:
    g = np.asarray(grids)
    if g.ndim != 2 or g.shape[1] != 81:
        raise ValueError(f"a batch of sudoku grids has shape (N, 81), got {g.shape}")
    if g.size and (g.min() < 0 or g.max() > 9):
        raise ValueError("sudoku grid values must be 0 (blank) or 1-9")
    return np.ascontiguousarray(g, dtype=np.int8)


def _cands(cands: np.ndarray) -> np.ndarray:
    if not isinstance(cands, np.ndarray) or cands.shape != (81,) or cands.dtype != np.uint16:
        raise ValueError("candidates must be a (81,) uint16 numpy array (bit d-1 = digit d)")
    return cands


def _seeds(seed, n: int) -> np.ndarray:
    entropy: int | list[int]
    if isinstance(seed, (int, np.integer)):
        entropy = int(seed) % (1 << 64)
    else:
        entropy = [int(s) % (1 << 64) for s in seed]
    return np.random.SeedSequence(entropy).generate_state(n, np.uint64)


def _check_clues(min_clues: int, max_clues: int) -> None:
    if not 17 <= min_clues <= max_clues <= 81:
        raise ValueError(f"need 17 <= min_clues <= max_clues <= 81, got min_clues={min_clues}, max_clues={max_clues}")


@torch_threads
def generate_solutions(n: int, seed: int) -> np.ndarray:
    """``(n, 81)`` int8 random valid full grids, deterministic from ``seed``."""
    out = np.zeros((n, 81), np.int8)
    if n:
        _gen_solutions_par(_seeds(seed, n), out)
    return out


@torch_threads
def _generate_from_seeds(seeds, min_clues, max_clues, minimal):
    n = len(seeds)
    puzzles = np.zeros((n, 81), np.int8)
    solutions = np.zeros((n, 81), np.int8)
    ok = np.zeros(n, np.bool_)
    if n:
        _gen_puzzles_par(seeds, int(min_clues), int(max_clues), bool(minimal), puzzles, solutions, ok)
    if not ok.all():
        raise ValueError(
            f"could not make puzzles with at most {max_clues} clues in {_MAX_ATTEMPTS} tries; raise max_clues"
        )
    return puzzles, solutions


def generate_puzzles(
    n: int, seed: int, *, min_clues: int = 17, max_clues: int = 81, minimal: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` puzzles with a unique solution: ``(puzzles (n, 81) int8 with 0 blanks, solutions (n, 81) int8)``.

    A random full grid loses clues in a random order, each removal kept only if the solution stays unique,
    never going below ``min_clues``. ``minimal=True`` tries every cell (a minimal puzzle unless ``min_clues``
    stopped it); ``minimal=False`` stops at a clue count drawn uniformly in ``[min_clues, max_clues]`` (or
    earlier at a minimal puzzle). A puzzle left with more than ``max_clues`` clues is redone from a new grid.
    Deterministic from ``seed`` whatever the number of threads.
    """
    _check_clues(min_clues, max_clues)
    return _generate_from_seeds(_seeds(seed, n), min_clues, max_clues, minimal)


def count_solutions(puzzle: np.ndarray, limit: int = 2) -> int:
    """Number of solutions of ``puzzle``, counting stops at ``limit`` (0 for conflicting givens)."""
    g = _grid(puzzle)
    out = np.zeros(81, np.int8)
    return int(_search(g, int(limit), -1, 0, out, False, np.zeros(1, np.uint64)))


def solve(puzzle: np.ndarray) -> np.ndarray | None:
    """One solution (int8 (81,)) found by backtracking, or None if there is none."""
    g = _grid(puzzle)
    out = np.zeros(81, np.int8)
    if _search(g, 1, -1, 0, out, False, np.zeros(1, np.uint64)) == 0:
        return None
    return out


def check_solvable(puzzle: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """``(a solution or None, unique)``: None when there is no solution, unique False when there are several."""
    g = _grid(puzzle)
    out = np.zeros(81, np.int8)
    n = _search(g, 2, -1, 0, out, False, np.zeros(1, np.uint64))
    if n == 0:
        return None, False
    return out, n == 1


def candidates(grid: np.ndarray) -> np.ndarray:
    """Candidate bitmasks ``(81,) uint16`` of ``grid`` (digits not used by a peer; 0 for filled cells)."""
    g = _grid(grid)
    cands = np.zeros(81, np.uint16)
    _candidates(g, cands)
    return cands


def find_naked_single(grid: np.ndarray, cands: np.ndarray) -> bool:
    """Place the first cell (row-major) that has one candidate; updates ``grid`` and peers' ``cands`` in place."""
    if not isinstance(grid, np.ndarray) or grid.shape != (81,) or grid.dtype != np.int8:
        raise ValueError("grid must be a (81,) int8 numpy array")
    return bool(_naked_single(grid, _cands(cands)) >= 0)


def find_hidden_single(grid: np.ndarray, cands: np.ndarray) -> bool:
    """Place a digit that has one possible cell in a unit (rows, then columns, then boxes); in place."""
    if not isinstance(grid, np.ndarray) or grid.shape != (81,) or grid.dtype != np.int8:
        raise ValueError("grid must be a (81,) int8 numpy array")
    return bool(_hidden_single(grid, _cands(cands)) >= 0)


def find_naked_pair(cands: np.ndarray) -> bool:
    """Two cells of a unit with the same two candidates: remove those from the unit's other cells (one unit)."""
    return bool(_naked_pair(_cands(cands)))


def find_naked_triple(cands: np.ndarray) -> bool:
    """Three cells of a unit (2-3 candidates each) with three candidates in all: remove those from the rest."""
    return bool(_naked_triple(_cands(cands)))


def find_locked_candidates(cands: np.ndarray) -> bool:
    """Pointing (box -> line), then claiming (line -> box); applies the first instance that eliminates."""
    return bool(_locked_candidates(_cands(cands)))


def find_xy_wing(cands: np.ndarray) -> bool:
    """Pivot {x,y} seeing pincers {x,z} and {y,z}: remove z from cells that see both pincers."""
    return bool(_xy_wing(_cands(cands)))


def find_unique_rectangle(cands: np.ndarray) -> bool:
    """Unique rectangle type 1: three corners {a,b}, the fourth {a,b,...} loses a and b."""
    return bool(_unique_rectangle(_cands(cands)))


@dataclass
class StepResult:
    """Outcome of :func:`step_solve`."""

    solved: bool
    grid: np.ndarray  # (81,) int8, the grid when the solver stopped
    order: np.ndarray  # int16 cell indices in placement order
    techniques: dict[str, int] = field(default_factory=dict)  # times each technique made progress


def step_solve(puzzle: np.ndarray) -> StepResult:
    """Run the 7-technique step solver (no guessing) on one puzzle."""
    g = _grid(puzzle).copy()
    order = np.full(81, -1, np.int16)
    counts = np.zeros(7, np.int64)
    solved, n = _step_core(g, order, counts)
    return StepResult(bool(solved), g, order[:n].copy(), {t: int(k) for t, k in zip(TECHNIQUES, counts, strict=True)})


def technique_classes(puzzles: np.ndarray) -> np.ndarray:
    """What the 7-technique step solver needs for each puzzle (N, 81): ``"singles"`` (naked and hidden singles
    only), ``"eliminations"`` (at least one of pairs, triples, locked candidates, XY-wing, unique rectangle), or
    ``"beyond"`` (it gets stuck: the hard split)."""
    out = np.empty(len(puzzles), dtype=object)
    for i, p in enumerate(_batch(puzzles)):
        r = step_solve(p)
        elim = any(r.techniques[t] for t in TECHNIQUES[2:])
        out[i] = "beyond" if not r.solved else "eliminations" if elim else "singles"
    return out.astype(str)


@torch_threads
def step_solve_batch(puzzles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step solver over a batch: ``(solved (N,) bool, order (N, 81) int16 placement order, -1 padded)``."""
    p = _batch(puzzles)
    solved = np.zeros(len(p), np.bool_)
    order = np.full((len(p), 81), -1, np.int16)
    if len(p):
        _step_batch_par(p, solved, order)
    return solved, order


def generate_split(
    n: int, seed: int, split: str, *, min_clues: int = 17, max_clues: int = 81, minimal: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` puzzles of a split: ``(puzzles, solutions, order)``, order = step-solver placement order (-1 pad).

    "train"/"test" keep puzzles the step solver finishes, "hard" those it cannot. Each split draws from its own
    seed stream, so splits never share puzzles; chunks of fixed size make a smaller ``n`` a prefix of a larger.
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown sudoku split {split!r}; expected one of {', '.join(SPLITS)}")
    _check_clues(min_clues, max_clues)
    want_solved = split != "hard"
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    have = 0
    chunk = 0
    while have < n:
        seeds = _seeds([seed, _SPLIT_STREAM[split], chunk], _CHUNK)
        p, s = _generate_from_seeds(seeds, min_clues, max_clues, minimal)
        solved, order = step_solve_batch(p)
        keep = solved == want_solved
        k = min(int(keep.sum()), n - have)
        idx = np.flatnonzero(keep)[:k]
        parts.append((p[idx], s[idx], order[idx]))
        have += k
        chunk += 1
        if have == 0 and chunk >= 40:
            raise ValueError(f"no {split} puzzles in {chunk * _CHUNK} generated with these clue settings")
    if not parts:
        return np.zeros((0, 81), np.int8), np.zeros((0, 81), np.int8), np.zeros((0, 81), np.int16)
    return tuple(np.concatenate([x[j] for x in parts]) for j in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# Text: parsing, formatting, files
# --------------------------------------------------------------------------------------------------------------
_HELP = "use 1-9 for givens and 0 or . for blanks"


def _parse(text: str) -> np.ndarray:
    cells: list[int] = []
    for ch in text:
        if ch.isspace():
            continue
        k = len(cells)
        if ch == ".":
            cells.append(0)
        elif ch in "0123456789":
            cells.append(ord(ch) - 48)
        else:
            where = f"row {k // 9 + 1}, column {k % 9 + 1}" if k < 81 else f"cell {k + 1}"
            raise InputError(f"bad character {ch!r} at {where}; {_HELP}")
    if len(cells) != 81:
        raise InputError(f"puzzle has {len(cells)} cells, expected 81 (9 rows of 9 digits; {_HELP})")
    g = np.array(cells, dtype=np.int8)
    names = (
        [f"row {i + 1}" for i in range(9)]
        + [f"column {i + 1}" for i in range(9)]
        + [f"box {b + 1} (rows {3 * (b // 3) + 1}-{3 * (b // 3) + 3}, columns {3 * (b % 3) + 1}-{3 * (b % 3) + 3})"
           for b in range(9)]
    )
    for u in range(27):
        vals = g[_UNITS[u]]
        counts = np.bincount(vals, minlength=10)
        counts[0] = 0
        d = int(np.argmax(counts))
        if counts[d] > 1:
            times = "twice" if counts[d] == 2 else f"{counts[d]} times"
            raise InputError(f"digit {d} appears {times} in {names[u]}")
    return g


def parse_puzzle(text: str) -> np.ndarray:
    """Parse 81 cells (1-9 givens, 0 or . blanks; whitespace ignored, so 9 lines of 9 work) into int8 (81,).

    Raises :class:`InputError` (one line) for a wrong cell count, a bad character (with its row and column) or a
    digit repeated in a row, column or box.
    """
    return _parse(text)


def format_grid(grid: np.ndarray) -> str:
    """A 9x9 board with box separators; blanks as '.'."""
    g = _grid(grid)
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("------+-------+------")
        cells = ["." if v == 0 else str(int(v)) for v in g[9 * r: 9 * r + 9]]
        lines.append(" | ".join(" ".join(cells[3 * s: 3 * s + 3]) for s in range(3)))
    return "\n".join(lines)


def valid_grids(grids: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: each row, column and box of each grid is a permutation of 1..9."""
    g = np.asarray(grids).astype(np.int64)
    if g.ndim != 2 or g.shape[1] != 81:
        raise ValueError(f"a batch of sudoku grids has shape (N, 81), got {g.shape}")
    ok = (g >= 1) & (g <= 9)
    bits = np.where(ok, np.left_shift(1, np.clip(g - 1, 0, 8)), 0)
    units = np.bitwise_or.reduce(bits[:, _UNITS], axis=2)  # (N, 27)
    return ok.all(axis=1) & (units == _ALL).all(axis=1)


def is_valid_solution(grid: np.ndarray) -> bool:
    """True if ``grid`` is a complete valid sudoku grid."""
    g = np.asarray(grid)
    if g.size != 81:
        return False
    return bool(valid_grids(g.reshape(1, 81))[0])


def _strip_comment(line: str) -> str:
    i = line.find("#")
    return (line if i < 0 else line[:i]).strip()


def read_puzzle_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one puzzle per line, ``puzzle`` or ``puzzle,solution`` (81 cells each, 0 or . for blanks).

    ``#`` starts a comment (whole line or trailing); blank lines are skipped. Either every line has a solution or
    none has. Returns ``(puzzles (N, 81) int8, solutions (N, 81) int8 or None)``; errors are :class:`InputError`
    naming the file and line.
    """
    p = Path(path)
    from unmask.core.files import read_text

    text = read_text(p, "puzzle file")  # UTF-8, a BOM accepted; another encoding names its line
    puzzles: list[np.ndarray] = []
    solutions: list[np.ndarray] = []
    first_kind: tuple[int, bool] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line:
            continue
        where = f"{p}, line {lineno}"
        fields = line.split(",")
        if len(fields) > 2:
            raise InputError(f"{where}: expected 'puzzle' or 'puzzle,solution', found {len(fields)} fields")
        try:
            puzzle = _parse(fields[0])
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        has_sol = len(fields) == 2
        if first_kind is None:
            first_kind = (lineno, has_sol)
        elif first_kind[1] != has_sol:
            raise InputError(
                f"{where}: {'has' if has_sol else 'lacks'} a solution but line {first_kind[0]} "
                f"{'has' if first_kind[1] else 'does not'}; give solutions for every puzzle or none"
            )
        if has_sol:
            try:
                sol = _parse(fields[1])
            except InputError as e:
                raise InputError(f"{where}: solution: {e}") from None
            if (sol == 0).any():
                raise InputError(f"{where}: the solution has blanks")
            if not is_valid_solution(sol):
                raise InputError(f"{where}: the solution is not a valid sudoku grid")
            bad = np.flatnonzero((puzzle != 0) & (puzzle != sol))
            if bad.size:
                c = int(bad[0])
                raise InputError(
                    f"{where}: the solution disagrees with the given at row {c // 9 + 1}, column {c % 9 + 1}"
                )
            solutions.append(sol)
        puzzles.append(puzzle)
    if not puzzles:
        raise InputError(f"{p}: no puzzles found (one per line, 81 cells, 0 or . for blanks)")
    sols = np.stack(solutions) if solutions else None
    return np.stack(puzzles), sols


def write_puzzle_file(
    path: str | os.PathLike, puzzles: np.ndarray, solutions: np.ndarray | None = None, *, blank: str = "."
) -> None:
    """Write one puzzle per line (``puzzle`` or ``puzzle,solution``), blanks as ``blank``."""
    p = _batch(puzzles)
    s = None if solutions is None else _batch(solutions)
    if s is not None and s.shape != p.shape:
        raise ValueError(f"puzzles {p.shape} and solutions {s.shape} differ in shape")
    chars = np.array(list(blank + "123456789"))
    lines = []
    for i in range(len(p)):
        line = "".join(chars[p[i]])
        if s is not None:
            line += "," + "".join(chars[s[i]])
        lines.append(line + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# Binary cache
# --------------------------------------------------------------------------------------------------------------
def save_cache(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save arrays to an ``.npz`` file atomically (temp file in the same folder, then ``os.replace``)."""
    p = Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError(f"cache array {k!r} has dtype object; only plain numeric arrays can be cached")
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mypy reads **arrays as possibly filling savez's bool allow_pickle; the keys are array names
            np.savez(f, **arrays)  # type: ignore[arg-type]
        from unmask.core.files import apply_umask

        apply_umask(tmp)  # mkstemp makes it 0600: the cache follows the user's umask like any file
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_cache(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load arrays saved by :func:`save_cache` (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read cache file {path}: {e}") from None


# --------------------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------------------
def _perm9(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 9) line permutations: bands (or stacks) permuted, and lines within each band."""
    outer = np.argsort(rng.random((n, 3)), axis=1)  # which source band goes to band i
    inner = np.argsort(rng.random((n, 3, 3)), axis=2)  # line order inside each target band
    target = np.arange(9)
    return outer[:, target // 3] * 3 + inner[:, target // 3, target % 3]


def augment(
    puzzles: np.ndarray, solutions: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random validity-preserving symmetry per row to a batch ``(N, 81)`` of puzzles and solutions.

    Digit relabelling (0 stays 0), rows within bands, bands, columns within stacks, stacks, and a transpose with
    probability 0.5; the same symmetry is applied to a row's puzzle and solution, so blanks stay aligned.
    """
    p = np.asarray(puzzles)
    s = np.asarray(solutions)
    if p.ndim != 2 or p.shape[1] != 81 or s.shape != p.shape:
        raise ValueError(f"augment needs puzzles and solutions of the same shape (N, 81), got {p.shape}, {s.shape}")
    n = int(p.shape[0])
    rows = _perm9(rng, n)
    cols = _perm9(rng, n)
    src = rows[:, :, None] * 9 + cols[:, None, :]  # (n, 9, 9): target (r, c) <- source cell
    flip = rng.random(n) < 0.5
    src = np.where(flip[:, None, None], src.transpose(0, 2, 1), src).reshape(n, 81)
    relabel = np.zeros((n, 10), dtype=np.int64)
    relabel[:, 1:] = np.argsort(rng.random((n, 9)), axis=1) + 1
    out_p = np.take_along_axis(relabel, np.take_along_axis(p, src, axis=1).astype(np.int64), axis=1)
    out_s = np.take_along_axis(relabel, np.take_along_axis(s, src, axis=1).astype(np.int64), axis=1)
    return out_p.astype(p.dtype), out_s.astype(s.dtype)



def singles_rounds(puzzles: np.ndarray, solutions: np.ndarray) -> np.ndarray:
    """(N,) parallel rounds of singles needed to fill each puzzle ((N, 81) digits, 0 = blank).

    Each round places, at once, every naked single and every hidden single of the current grid (plain row, column
    and box elimination); a round that finds none places one cell from the solution (the puzzle needs a stronger
    technique there). A decoder that commits, per forward pass, exactly the cells the visible grid forces needs
    this many passes: the NFE floor of parallel decoding for a model that does one round of propagation per pass.
    """
    grid = np.array(puzzles, dtype=np.int64, copy=True)
    sol = np.asarray(solutions, dtype=np.int64)
    N = len(grid)
    rounds = np.zeros(N, dtype=np.int64)
    units = (_ROW, _COL, _BOX)
    while True:
        live = (grid == 0).any(axis=1)
        if not live.any():
            return rounds
        rounds += live
        onehot = np.zeros((N, 81, 10), dtype=bool)
        np.put_along_axis(onehot, grid[:, :, None], True, axis=2)
        onehot = onehot[:, :, 1:]  # (N, 81, 9): digit present in the cell
        cand = np.repeat(grid[:, :, None] == 0, 9, axis=2)  # (N, 81, 9): digit possible in the cell
        for u in units:
            has = np.zeros((N, 9, 9), dtype=bool)
            # numpy's stubs accept only an integer array as ufunc.at's index; a tuple index works (numpy docs)
            np.logical_or.at(has, (slice(None), u), onehot)  # type: ignore[arg-type]
            cand &= ~has[:, u]
        hidden = np.zeros_like(cand)
        for u in units:
            n_in_unit = np.zeros((N, 9, 9), dtype=np.int64)
            np.add.at(n_in_unit, (slice(None), u), cand)  # type: ignore[arg-type]  # tuple index: as above
            hidden |= cand & (n_in_unit[:, u] == 1)
        naked = cand & (cand.sum(axis=2, keepdims=True) == 1)
        place = hidden | naked
        value = np.where(place.any(axis=2), place.argmax(axis=2) + 1, 0)
        stuck = live & (value == 0).all(axis=1)
        if stuck.any():  # one cell from the solution: the first blank
            rows = np.nonzero(stuck)[0]
            first = (grid[rows] == 0).argmax(axis=1)
            value[rows, first] = sol[rows, first]
        grid = np.where(grid == 0, value, grid)
