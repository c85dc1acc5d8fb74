"""Zebra (Einstein) puzzle library: clue semantics, the deductive solver, exact counting, generation, text I/O.

Pure numpy + numba (no torch). Sizes: ``n`` houses (columns, 0 = leftmost) and ``m`` attributes (rows), both at most
6; every attribute is a permutation of the values ``0..n-1`` over the houses. A solution is an ``(6, 6)`` array
``sol[a, h] = v`` (entries outside ``m x n`` are -1).

Clues are ``(4,)`` int rows ``(type, x, y, z)``. Operands are codes: an *item* (attribute ``a``, value ``v``) is
``6 * a + v`` (0..35), a *house* ``k`` is ``36 + k`` (houses only appear as the second operand of ``=`` and ``!=``),
-1 = unused. ``house(x)`` below is the house holding item ``x`` (or ``k`` for a house operand). The 7 types:

====  ================  =========================================================================================
code  text              meaning
====  ================  =========================================================================================
0     ``x = y``         same house: house(x) == house(y); ``A1 = #3``: item A1 is in house 3
1     ``x != y``        different houses: house(x) != house(y)
2     ``x left-of y``   somewhere to the left: house(x) < house(y)
3     ``x immediate-left y``  directly left: house(x) + 1 == house(y)
4     ``x next-to y``   neighbours: abs(house(x) - house(y)) == 1
5     ``x at-an-end``   house(x) is the first or the last house
6     ``y in-between x z``  stored as ``(6, x, y, z)``: y strictly between x and z (x < y < z or z < y < x,
                        not necessarily adjacent)
====  ================  =========================================================================================

Deductive solver (:func:`deductive_solve`): house domains ``pos[a, v]`` (bitmask of houses item (a, v) may be in).
One step = permutation singles to a fixpoint (a value with one possible house takes it from the other values; a
house possible for one value only gets that value), then the first clue (in clue order) whose arc-consistency
propagation removes a candidate is applied once, and the loop repeats. It never guesses, so when every domain
is a single house the solution is forced (hence unique). Cells are recorded in the order they become known.

Exact solver (:func:`count_solutions`): depth-first search on the same propagation, branching on the item with the
fewest houses; counts solutions up to a limit.

Generation (:func:`generate_split`): per puzzle (own splitmix64 seed): pick n, m uniformly, random permutations,
then draw random true clues (type uniform over the 7; for ``=``/``!=`` the second operand is a house with
probability 1/4). A clue is kept only if it shrinks the deductive closure (others are redundant at that point),
until the closure solves the puzzle. Optionally (``prune``) clues are then removed, in random order, while the
deductive solver still finishes (fewer, harder clues). The clues are shuffled; a puzzle needing more than
``max_clues`` is redrawn. The "hard" split keeps puzzles with a unique solution that the deductive solver cannot
finish: while the exact solver finds a second solution, a random true clue that rules it out (and does not let
the deductive solver finish) is added; then clues are pruned while the solution stays unique.

Text format (:func:`parse_text`, :func:`format_text`), one clue per line, ``#`` starts a comment::

    houses 4 attributes 3
    A1 = B3
    C2 != #1
    A3 left-of B1
    A1 immediate-left C2
    B2 next-to C4
    A4 at-an-end
    B3 in-between A1 C2
    A: 1 3 2 4          # optional answer rows (values of attribute A in houses 1..n); '.' = unknown

Attributes are letters A-F, values 1..n, houses ``#1``..``#n`` (1 = leftmost); a ``#`` not followed by a digit
starts a comment. A file holds several puzzles, each
starting with its ``houses`` line.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from numba import njit, prange

from unmask.core.errors import InputError
from unmask.plugins.tasks._rng import rand_below as _rand_below
from unmask.plugins.tasks._threads import torch_threads

__all__ = [
    "CACHE_VERSION", "CLUE_TYPES", "ARITY", "MAXN", "MAXM", "HOUSE_OP",
    "EQ", "NEQ", "LEFT", "IMM_LEFT", "NEXT_TO", "AT_END", "BETWEEN",
    "clue_holds", "check_batch", "deductive_solve", "count_solutions", "solve_batch", "generate_chunk",
    "generate_split", "augment",
    "parse_text", "parse_blocks", "format_text", "save_cache", "load_cache",
]

CACHE_VERSION = 1
"""Bump when generation changes so cached data sets are regenerated."""

MAXN = 6  # houses (and values per attribute)
MAXM = 6  # attributes
HOUSE_OP = 36  # operand code of house k is HOUSE_OP + k
EQ, NEQ, LEFT, IMM_LEFT, NEXT_TO, AT_END, BETWEEN = range(7)
CLUE_TYPES = ("=", "!=", "left-of", "immediate-left", "next-to", "at-an-end", "in-between")
ARITY = (2, 2, 2, 2, 2, 1, 3)
SPLITS = ("train", "test", "hard")

_SPLIT_STREAM = {"train": 0x2EB1, "test": 0x2E57, "hard": 0x2EAD}
_CHUNK = 256  # fixed, so a smaller n is a prefix of a larger n
_CAP = 512  # clue buffer per puzzle during generation
_MAX_TRIES = 4000  # clue draws per solution before giving up on it
_MAX_ATTEMPTS = 200  # solutions tried per puzzle


# --------------------------------------------------------------------------------------------------------------
# Propagation
# --------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _single(d):
    return d != 0 and (d & (d - 1)) == 0


@njit(cache=True, nogil=True)
def _low(d):
    k = 0
    while not (d >> k) & 1:
        k += 1
    return k


@njit(cache=True, nogil=True)
def _high(d):
    k = 0
    while d >> (k + 1):
        k += 1
    return k


@njit(cache=True, nogil=True)
def _dom(pos, op):
    if op >= HOUSE_OP:
        return np.int64(1) << (op - HOUSE_OP)
    return pos[op // 6, op % 6]


@njit(cache=True, nogil=True)
def _restrict(pos, op, mask):
    """Intersect the domain of ``op`` with ``mask``: 0 unchanged, 1 changed, -1 contradiction."""
    if op >= HOUSE_OP:
        return 0 if (mask >> (op - HOUSE_OP)) & 1 else -1
    a = op // 6
    v = op % 6
    d = pos[a, v]
    nd = d & mask
    if nd == d:
        return 0
    pos[a, v] = nd
    return -1 if nd == 0 else 1


@njit(cache=True, nogil=True)
def _merge(r1, r2):
    if r1 < 0 or r2 < 0:
        return -1
    return 1 if (r1 > 0 or r2 > 0) else 0


@njit(cache=True, nogil=True)
def _apply(pos, clue, n):
    """Arc consistency of one clue on the house domains: 0 no change, 1 changed, -1 contradiction."""
    full = (np.int64(1) << n) - 1
    t, x, y, z = clue[0], clue[1], clue[2], clue[3]
    dx = _dom(pos, x)
    if dx == 0:
        return -1
    if t == AT_END:
        return _restrict(pos, x, np.int64(1) | (np.int64(1) << (n - 1)))
    dy = _dom(pos, y)
    if dy == 0:
        return -1
    if t == EQ:
        d = dx & dy
        return _merge(_restrict(pos, x, d), _restrict(pos, y, d))
    if t == NEQ:
        r = 0
        if _single(dy):
            r = _restrict(pos, x, full & ~dy)
            if r < 0:
                return -1
        dx = _dom(pos, x)
        if _single(dx):
            r = _merge(r, _restrict(pos, y, full & ~dx))
        return r
    if t == LEFT:
        hi = _high(dy)
        lo = _low(dx)
        r = _restrict(pos, x, (np.int64(1) << hi) - 1)
        if r < 0:
            return -1
        return _merge(r, _restrict(pos, y, full & ~((np.int64(1) << (lo + 1)) - 1)))
    if t == IMM_LEFT:
        r = _restrict(pos, x, dy >> 1)
        if r < 0:
            return -1
        dx = _dom(pos, x)
        return _merge(r, _restrict(pos, y, (dx << 1) & full))
    if t == NEXT_TO:
        r = _restrict(pos, x, ((dy << 1) | (dy >> 1)) & full)
        if r < 0:
            return -1
        dx = _dom(pos, x)
        return _merge(r, _restrict(pos, y, ((dx << 1) | (dx >> 1)) & full))
    # BETWEEN: y strictly between x and z
    dz = _dom(pos, z)
    if dz == 0:
        return -1
    sx = np.int64(0)
    sy = np.int64(0)
    sz = np.int64(0)
    for hx in range(n):
        if not (dx >> hx) & 1:
            continue
        for hy in range(n):
            if not (dy >> hy) & 1:
                continue
            for hz in range(n):
                if not (dz >> hz) & 1:
                    continue
                if (hx < hy and hy < hz) or (hz < hy and hy < hx):
                    sx |= np.int64(1) << hx
                    sy |= np.int64(1) << hy
                    sz |= np.int64(1) << hz
    r = _restrict(pos, x, sx)
    if r < 0:
        return -1
    r = _merge(r, _restrict(pos, y, sy))
    if r < 0:
        return -1
    return _merge(r, _restrict(pos, z, sz))


@njit(cache=True, nogil=True)
def _singles(pos, n, m):
    """Permutation singles to a fixpoint: 0 no change, 1 changed, -1 contradiction."""
    changed = 0
    again = True
    while again:
        again = False
        for a in range(m):
            for v in range(n):
                d = pos[a, v]
                if d == 0:
                    return -1
                if (d & (d - 1)) == 0:
                    for w in range(n):
                        if w != v and (pos[a, w] & d):
                            pos[a, w] &= ~d
                            if pos[a, w] == 0:
                                return -1
                            again = True
                            changed = 1
            for h in range(n):
                bit = np.int64(1) << h
                cnt = 0
                last = -1
                for v in range(n):
                    if pos[a, v] & bit:
                        cnt += 1
                        last = v
                if cnt == 0:
                    return -1
                if cnt == 1 and pos[a, last] != bit:
                    pos[a, last] = bit
                    again = True
                    changed = 1
    return changed


@njit(cache=True, nogil=True)
def _init_pos(pos, n, m):
    pos[:, :] = 0
    full = (np.int64(1) << n) - 1
    for a in range(m):
        for v in range(n):
            pos[a, v] = full


@njit(cache=True, nogil=True)
def _fixpoint(pos, clues, nc, n, m):
    """Singles and every clue until nothing changes: 0 no change, 1 changed, -1 contradiction."""
    changed = 0
    while True:
        r = _singles(pos, n, m)
        if r < 0:
            return -1
        if r > 0:
            changed = 1
        progress = False
        for i in range(nc):
            r = _apply(pos, clues[i], n)
            if r < 0:
                return -1
            if r > 0:
                progress = True
        if not progress:
            return changed
        changed = 1


@njit(cache=True, nogil=True)
def _determined(pos, n, m):
    for a in range(m):
        for v in range(n):
            d = pos[a, v]
            if d == 0 or (d & (d - 1)) != 0:
                return False
    return True


@njit(cache=True, nogil=True)
def _step_solve(clues, nc, n, m, order):
    """The deductive solver. Returns (status, k): status 1 solved, 0 stuck, -1 contradiction; ``order[:k]`` =
    cells ``6 * a + h`` in the order they became known."""
    pos = np.zeros((MAXM, MAXN), np.int64)
    _init_pos(pos, n, m)
    known = np.zeros((MAXM, MAXN), np.bool_)
    k = 0
    while True:
        if _singles(pos, n, m) < 0:
            return -1, k
        for a in range(m):
            for v in range(n):
                d = pos[a, v]
                if (d & (d - 1)) == 0:
                    h = _low(d)
                    if not known[a, h]:
                        known[a, h] = True
                        order[k] = 6 * a + h
                        k += 1
        if k == n * m:
            return 1, k
        progress = False
        for i in range(nc):
            r = _apply(pos, clues[i], n)
            if r < 0:
                return -1, k
            if r > 0:
                progress = True
                break
        if not progress:
            return 0, k


@njit(cache=True, nogil=True)
def _house_of(op, hof):
    if op >= HOUSE_OP:
        return op - HOUSE_OP
    return hof[op // 6, op % 6]


@njit(cache=True, nogil=True)
def _holds(clue, hof, n):
    """Does ``clue`` hold when item (a, v) is in house ``hof[a, v]``?"""
    t = clue[0]
    hx = _house_of(clue[1], hof)
    if t == AT_END:
        return hx == 0 or hx == n - 1
    hy = _house_of(clue[2], hof)
    if t == EQ:
        return hx == hy
    if t == NEQ:
        return hx != hy
    if t == LEFT:
        return hx < hy
    if t == IMM_LEFT:
        return hx + 1 == hy
    if t == NEXT_TO:
        return hx - hy == 1 or hy - hx == 1
    hz = _house_of(clue[3], hof)
    return (hx < hy and hy < hz) or (hz < hy and hy < hx)


@njit(cache=True, nogil=True)
def _check_one(clues, nc, n, m, sol):
    """Is ``sol`` ((6, 6), [a, h] = v) a permutation per attribute satisfying every clue?"""
    hof = np.full((MAXM, MAXN), -1, np.int64)
    for a in range(m):
        for h in range(n):
            v = sol[a, h]
            if v < 0 or v >= n or hof[a, v] >= 0:
                return False
            hof[a, v] = h
    for i in range(nc):
        if not _holds(clues[i], hof, n):
            return False
    return True


@njit(cache=True, nogil=True, parallel=True)
def _check_par(clues, ncs, sizes, sols, out):
    for i in prange(clues.shape[0]):
        out[i] = _check_one(clues[i], ncs[i], sizes[i, 0], sizes[i, 1], sols[i])


@njit(cache=True, nogil=True)
def _pick_item(pos, n, m):
    best = -1
    bestc = 99
    for a in range(m):
        for v in range(n):
            d = pos[a, v]
            if (d & (d - 1)) != 0:
                c = 0
                while d:
                    d &= d - 1
                    c += 1
                if c < bestc:
                    bestc = c
                    best = 6 * a + v
    return best


@njit(cache=True, nogil=True)
def _count(clues, nc, n, m, limit, sol_out):
    """Number of solutions (up to ``limit``); the first ``len(sol_out)`` found go to ``sol_out`` ((k, 6, 6),
    [a, h] = v)."""
    stack = np.zeros((MAXM * MAXN + 1, MAXM, MAXN), np.int64)
    items = np.zeros(MAXM * MAXN + 1, np.int64)
    rem = np.zeros(MAXM * MAXN + 1, np.int64)
    cur = np.zeros((MAXM, MAXN), np.int64)
    _init_pos(cur, n, m)
    count = 0
    depth = 0
    ok = _fixpoint(cur, clues, nc, n, m) >= 0
    while True:
        if ok:
            it = _pick_item(cur, n, m)
            if it < 0:
                hof = np.full((MAXM, MAXN), -1, np.int64)
                for a in range(m):
                    for v in range(n):
                        hof[a, v] = _low(cur[a, v])
                good = True
                for i in range(nc):
                    if not _holds(clues[i], hof, n):
                        good = False
                        break
                if good:
                    if count < sol_out.shape[0]:
                        sol_out[count, :, :] = -1
                        for a in range(m):
                            for v in range(n):
                                sol_out[count, a, hof[a, v]] = v
                    count += 1
                    if count >= limit:
                        return count
            else:
                stack[depth] = cur
                items[depth] = it
                rem[depth] = cur[it // 6, it % 6]
                depth += 1
        # next branch
        ok = False
        while depth > 0 and not ok:
            d = depth - 1
            r = rem[d]
            if r == 0:
                depth -= 1
                continue
            bit = r & -r
            rem[d] = r & ~bit
            cur[:, :] = stack[d]
            it = items[d]
            cur[it // 6, it % 6] = bit
            ok = _fixpoint(cur, clues, nc, n, m) >= 0
        if not ok:
            return count


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _other(rng, k, avoid):
    """A random integer in [0, k) other than ``avoid``."""
    b = _rand_below(rng, k - 1)
    return b + 1 if b >= avoid else b


@njit(cache=True, nogil=True)
def _random_clue(rng, sol, n, m, out):
    """A random clue that holds for ``sol`` ([a, h] = v)."""
    t = _rand_below(rng, 7)
    out[0] = t
    out[1] = -1
    out[2] = -1
    out[3] = -1
    if t == EQ or t == NEQ:
        h1 = _rand_below(rng, n)
        h2 = h1 if t == EQ else _other(rng, n, h1)
        a = _rand_below(rng, m)
        x = 6 * a + sol[a, h1]
        if _rand_below(rng, 4) == 0:
            out[1] = x
            out[2] = HOUSE_OP + h2
            return
        b = _other(rng, m, a)
        y = 6 * b + sol[b, h2]
        if _rand_below(rng, 2):
            x, y = y, x
        out[1] = x
        out[2] = y
    elif t == AT_END:
        h = 0 if _rand_below(rng, 2) == 0 else n - 1
        a = _rand_below(rng, m)
        out[1] = 6 * a + sol[a, h]
    elif t == BETWEEN:
        # three distinct houses h1 < h2 < h3
        h1 = _rand_below(rng, n)
        h2 = _other(rng, n, h1)
        h3 = _rand_below(rng, n - 2)
        lo = min(h1, h2)
        hi = max(h1, h2)
        if h3 >= lo:
            h3 += 1
        if h3 >= hi:
            h3 += 1
        s0 = min(lo, h3)
        s2 = max(hi, h3)
        s1 = lo + hi + h3 - s0 - s2
        if _rand_below(rng, 2):
            s0, s2 = s2, s0
        a = _rand_below(rng, m)
        b = _rand_below(rng, m)
        c = _rand_below(rng, m)
        out[1] = 6 * a + sol[a, s0]
        out[2] = 6 * b + sol[b, s1]
        out[3] = 6 * c + sol[c, s2]
    else:
        if t == LEFT:
            h1 = _rand_below(rng, n)
            h2 = _other(rng, n, h1)
            if h1 > h2:
                h1, h2 = h2, h1
        else:
            h1 = _rand_below(rng, n - 1)
            h2 = h1 + 1
            if t == NEXT_TO and _rand_below(rng, 2):
                h1, h2 = h2, h1
        a = _rand_below(rng, m)
        b = _rand_below(rng, m)
        out[1] = 6 * a + sol[a, h1]
        out[2] = 6 * b + sol[b, h2]


@njit(cache=True, nogil=True)
def _same(p, q, n, m):
    for a in range(m):
        for v in range(n):
            if p[a, v] != q[a, v]:
                return False
    return True


@njit(cache=True, nogil=True)
def _solved_by_deduction(clues, nc, n, m):
    pos = np.zeros((MAXM, MAXN), np.int64)
    _init_pos(pos, n, m)
    return _fixpoint(pos, clues, nc, n, m) >= 0 and _determined(pos, n, m)


@njit(cache=True, nogil=True)
def _prune(rng, buf, nc, n, m, hard, scratch):
    """Remove clues in random order while the puzzle stays deductively solvable (or, ``hard``, unique)."""
    perm = np.arange(nc)
    for i in range(nc - 1, 0, -1):
        j = _rand_below(rng, i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    active = np.ones(nc, np.bool_)
    tmp = np.empty((nc, 4), np.int64)
    for idx in perm:
        active[idx] = False
        k = 0
        for i in range(nc):
            if active[i]:
                tmp[k] = buf[i]
                k += 1
        if hard:
            keep_removed = _count(tmp, k, n, m, 2, scratch) == 1  # scratch: (1, 6, 6)
        else:
            keep_removed = _solved_by_deduction(tmp, k, n, m)
        if not keep_removed:
            active[idx] = True
    k = 0
    for i in range(nc):
        if active[i]:
            buf[k] = buf[i]
            k += 1
    return k


@njit(cache=True, nogil=True)
def _count_rows(buf):
    k = 0
    while k < buf.shape[0] and buf[k, 0] >= 0:
        k += 1
    return k


@njit(cache=True, nogil=True)
def _add_hard_clues(rng, sol, n, m, buf, pos, trial, two):
    """Clues for a "hard" puzzle into ``buf`` (-1 terminated): each rules out a second solution found by the exact
    solver, none lets the deductive solver finish. True when the solution became unique."""
    hof = np.full((MAXM, MAXN), -1, np.int64)
    for a in range(m):
        for h in range(n):
            hof[a, sol[a, h]] = h
    alt = np.full((MAXM, MAXN), -1, np.int64)
    nc = 0
    buf[0, 0] = -1
    while nc < _CAP - 1:
        k = _count(buf, nc, n, m, 2, two)
        if k == 1:
            return True
        w = 1  # the found solution that is not ``sol``
        for a in range(m):
            for h in range(n):
                if two[0, a, h] != sol[a, h]:
                    w = 0
        for a in range(m):
            for h in range(n):
                alt[a, two[w, a, h]] = h
        added = False
        for _t in range(_MAX_TRIES):
            _random_clue(rng, sol, n, m, buf[nc])
            if _holds(buf[nc], alt, n):
                continue  # must rule out the other solution
            trial[:, :] = pos
            r = _fixpoint(trial, buf, nc + 1, n, m)
            assert r >= 0
            if _determined(trial, n, m):
                continue  # would make the puzzle deductively solvable
            pos[:, :] = trial
            nc += 1
            buf[nc, 0] = -1
            added = True
            break
        if not added:
            return False
    return False


@njit(cache=True, nogil=True)
def _gen_one(seed, nmin, nmax, mmin, mmax, max_clues, prune, hard, clues_out, sol_out, order_out, info):
    """One puzzle into the output rows; ``info`` = (n, m, clue count, deductive cells). False if none was found."""
    rng = np.empty(1, np.uint64)
    rng[0] = seed
    sol = np.full((MAXM, MAXN), -1, np.int64)
    buf = np.zeros((_CAP, 4), np.int64)
    pos = np.zeros((MAXM, MAXN), np.int64)
    trial = np.zeros((MAXM, MAXN), np.int64)
    scratch = np.zeros((1, MAXM, MAXN), np.int64)
    two = np.zeros((2, MAXM, MAXN), np.int64)
    order = np.full(MAXM * MAXN, -1, np.int64)
    for _ in range(_MAX_ATTEMPTS):
        n = nmin + _rand_below(rng, nmax - nmin + 1)
        m = mmin + _rand_below(rng, mmax - mmin + 1)
        sol[:, :] = -1
        for a in range(m):
            for h in range(n):
                sol[a, h] = h
            for i in range(n - 1, 0, -1):
                j = _rand_below(rng, i + 1)
                sol[a, i], sol[a, j] = sol[a, j], sol[a, i]
        _init_pos(pos, n, m)
        nc = 0
        done = False
        if hard:
            done = _add_hard_clues(rng, sol, n, m, buf, pos, trial, two)
            nc = _count_rows(buf)
        else:
            for _t in range(_MAX_TRIES):
                if nc >= _CAP:
                    break
                _random_clue(rng, sol, n, m, buf[nc])
                trial[:, :] = pos
                r = _fixpoint(trial, buf, nc + 1, n, m)
                assert r >= 0
                if _same(trial, pos, n, m):
                    continue  # redundant given what deduction already knows
                pos[:, :] = trial
                nc += 1
                if _determined(pos, n, m):
                    done = True
                    break
        if not done:
            continue
        if prune or hard:
            nc = _prune(rng, buf, nc, n, m, hard, scratch)
        if nc > max_clues:
            continue
        for i in range(nc - 1, 0, -1):  # clue order carries no information
            j = _rand_below(rng, i + 1)
            for c in range(4):
                buf[i, c], buf[j, c] = buf[j, c], buf[i, c]
        order[:] = -1
        status, k = _step_solve(buf, nc, n, m, order)
        assert (status == 1) != hard
        clues_out[:, :] = -1
        clues_out[:nc] = buf[:nc]
        sol_out[:, :] = sol
        order_out[:] = order
        info[0] = n
        info[1] = m
        info[2] = nc
        info[3] = k
        return True
    return False


@njit(cache=True, nogil=True, parallel=True)
def _gen_par(seeds, nmin, nmax, mmin, mmax, max_clues, prune, hard, clues, sols, orders, info, ok):
    for i in prange(seeds.shape[0]):
        ok[i] = _gen_one(seeds[i], nmin, nmax, mmin, mmax, max_clues, prune, hard, clues[i], sols[i], orders[i],
                         info[i])


def _seeds(seed, n: int) -> np.ndarray:
    entropy = [int(s) % (1 << 64) for s in seed]
    return np.random.SeedSequence(entropy).generate_state(n, np.uint64)


@torch_threads
def generate_chunk(
    seed: int, split: str, chunk: int, *, min_houses: int = 3, max_houses: int = 6, min_attributes: int = 3,
    max_attributes: int = 6, max_clues: int = 40, prune: bool = True, size: int = _CHUNK,
) -> dict[str, np.ndarray]:
    """Chunk ``chunk`` (``size`` puzzles) of a split's stream: ``clues (k, max_clues, 4)`` int8 (-1 pad),
    ``solutions (k, 6, 6)`` int8 ([a, h] = v, -1 outside), ``order (k, 36)`` int8 (cells 6a+h, -1 pad),
    ``info (k, 4)`` int16 (houses, attributes, clues, cells the deductive solver found)."""
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown zebra split {split!r}; expected one of {', '.join(SPLITS)}")
    if not (3 <= min_houses <= max_houses <= MAXN and 3 <= min_attributes <= max_attributes <= MAXM):
        raise ValueError("need 3 <= min <= max <= 6 for houses and attributes")
    seeds = _seeds([seed, _SPLIT_STREAM[split], chunk], size)
    clues = np.full((size, max_clues, 4), -1, np.int64)
    sols = np.full((size, MAXM, MAXN), -1, np.int64)
    orders = np.full((size, MAXM * MAXN), -1, np.int64)
    info = np.zeros((size, 4), np.int64)
    ok = np.zeros(size, np.bool_)
    _gen_par(seeds, min_houses, max_houses, min_attributes, max_attributes, max_clues, bool(prune),
             split == "hard", clues, sols, orders, info, ok)
    return {"clues": clues[ok].astype(np.int8), "solutions": sols[ok].astype(np.int8),
            "order": orders[ok].astype(np.int8), "info": info[ok].astype(np.int16)}


def generate_split(n: int, seed: int, split: str, *, progress=None, **kw) -> dict[str, np.ndarray]:
    """``n`` puzzles of a split (see :func:`generate_chunk` for the arrays and options). Each split has its own
    seed stream; fixed-size chunks make a smaller ``n`` a prefix of a larger one. ``progress(k)`` is called with the
    number of puzzles each chunk added."""
    parts: list[dict[str, np.ndarray]] = []
    have = 0
    chunk = 0
    while have < n:
        part = generate_chunk(seed, split, chunk, **kw)
        k = min(len(part["info"]), n - have)
        parts.append({key: v[:k] for key, v in part.items()})
        have += k
        chunk += 1
        if progress is not None:
            progress(k)
        if have == 0 and chunk >= 20:
            raise ValueError(f"no {split} puzzles in {chunk * _CHUNK} tries with these settings; raise max_clues")
    if not parts:
        return generate_chunk(seed, split, 0, size=0, **kw)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------------------------------------------
# Python-level wrappers
# --------------------------------------------------------------------------------------------------------------
def _clue_array(clues) -> np.ndarray:
    c = np.asarray(clues, dtype=np.int64).reshape(-1, 4)
    return c[c[:, 0] >= 0]


def deductive_solve(clues, n: int, m: int) -> tuple[int, np.ndarray]:
    """Run the deductive solver: ``(status, order)`` with status 1 solved, 0 stuck, -1 contradiction and order the
    cells ``6 * a + h`` in the order they became known."""
    c = _clue_array(clues)
    order = np.full(MAXM * MAXN, -1, np.int64)
    status, k = _step_solve(c, len(c), int(n), int(m), order)
    return int(status), order[:k].copy()


def count_solutions(clues, n: int, m: int, limit: int = 2) -> tuple[int, np.ndarray]:
    """``(number of solutions up to limit, first solution (6, 6) [a, h] = v or all -1)``."""
    c = _clue_array(clues)
    sol = np.full((1, MAXM, MAXN), -1, np.int64)
    k = _count(c, len(c), int(n), int(m), int(limit), sol)
    return int(k), sol[0]


def clue_holds(clue, solution, n: int) -> bool:
    """Does one clue ``(type, x, y, z)`` hold in ``solution`` ((6, 6) [a, h] = v)?"""
    sol = np.asarray(solution, dtype=np.int64)
    hof = np.full((MAXM, MAXN), -1, np.int64)
    for a in range(MAXM):
        for h in range(n):
            if sol[a, h] >= 0:
                hof[a, sol[a, h]] = h
    return bool(_holds(np.asarray(clue, dtype=np.int64), hof, int(n)))


@torch_threads
def check_batch(clues: np.ndarray, sizes: np.ndarray, solutions: np.ndarray) -> np.ndarray:
    """(N,) bool: each solution ((N, 6, 6), [a, h] = v) is a permutation per attribute that satisfies its clues
    ((N, C, 4), -1 padded); ``sizes`` (N, 2) = (houses, attributes)."""
    c = np.asarray(clues, dtype=np.int64)
    ncs = (c[:, :, 0] >= 0).sum(axis=1).astype(np.int64)
    out = np.zeros(len(c), np.bool_)
    if len(c):
        _check_par(c, ncs, np.asarray(sizes, dtype=np.int64), np.asarray(solutions, dtype=np.int64), out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _solve_par(clues, ncs, sizes, orders, status):
    for i in prange(clues.shape[0]):
        st, _ = _step_solve(clues[i], ncs[i], sizes[i, 0], sizes[i, 1], orders[i])
        status[i] = st


@torch_threads
def solve_batch(clues: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Deductive solver order for a batch: (N, 36) int64 cells ``6a + h`` (-1 padded); clues (N, C, 4) with the
    real clues first, sizes (N, 2) = (houses, attributes)."""
    c = np.ascontiguousarray(clues, dtype=np.int64)
    ncs = (c[:, :, 0] >= 0).sum(axis=1).astype(np.int64)
    orders = np.full((len(c), MAXM * MAXN), -1, np.int64)
    status = np.zeros(len(c), np.int64)
    if len(c):
        _solve_par(c, ncs, np.ascontiguousarray(sizes, dtype=np.int64), orders, status)
    return orders


def augment(clues: np.ndarray, solutions: np.ndarray, sizes: np.ndarray, rng: np.random.Generator):
    """One random symmetry per puzzle: ``(clues, solutions)`` relabelled. Values are permuted within each attribute,
    attributes are permuted, houses are mirrored with probability 1/2 (the operands of left-of and immediate-left
    swap), the real clues are shuffled (they stay first) and symmetric clues (item = item, item != item, next-to,
    the two ends of in-between) swap operands with probability 1/2. clues (N, C, 4) codes with -1 padding,
    solutions (N, 6, 6) [a, h] = v, sizes (N, 2) = (houses, attributes)."""
    c = np.array(clues, dtype=np.int64)
    s = np.asarray(solutions, dtype=np.int64)
    N, C = int(c.shape[0]), int(c.shape[1])
    n = np.asarray(sizes)[:, 0].astype(np.int64)
    m = np.asarray(sizes)[:, 1].astype(np.int64)
    i6 = np.arange(6)
    vp = np.argsort(np.where(i6 < n[:, None, None], rng.random((N, MAXM, MAXN)), 2 + i6), axis=2)  # (N, a, v)
    ap = np.argsort(np.where(i6 < m[:, None], rng.random((N, MAXM)), 2 + i6), axis=1)  # (N, a) -> new a
    flip = rng.random(N) < 0.5
    rows = np.arange(N)[:, None, None]
    ops = c[:, :, 1:]
    item = (ops >= 0) & (ops < HOUSE_OP)
    a = np.where(item, ops // 6, 0)
    v = np.where(item, ops % 6, 0)
    new_item = 6 * ap[rows, a] + vp[rows, a, v]
    house = ops >= HOUSE_OP
    k = ops - HOUSE_OP
    new_house = HOUSE_OP + np.where(flip[:, None, None], n[:, None, None] - 1 - k, k)
    c[:, :, 1:] = np.where(item, new_item, np.where(house, new_house, ops))
    t = c[:, :, 0]

    def swap(sel, i, j):
        x = c[:, :, i].copy()
        c[:, :, i] = np.where(sel, c[:, :, j], x)
        c[:, :, j] = np.where(sel, x, c[:, :, j])

    swap(((t == LEFT) | (t == IMM_LEFT)) & flip[:, None], 1, 2)
    coin = rng.random((N, C)) < 0.5
    both_items = (c[:, :, 1] >= 0) & (c[:, :, 1] < HOUSE_OP) & (c[:, :, 2] >= 0) & (c[:, :, 2] < HOUSE_OP)
    swap(coin & (((t == EQ) | (t == NEQ)) & both_items | (t == NEXT_TO)), 1, 2)
    swap(coin & (t == BETWEEN), 1, 3)
    key = np.where(t >= 0, rng.random((N, C)), 2 + np.arange(C))
    c = np.take_along_axis(c, np.argsort(key, axis=1)[:, :, None], axis=1)
    real = (i6[None, :, None] < m[:, None, None]) & (i6[None, None, :] < n[:, None, None])
    R, A, H = np.nonzero(real)  # puzzle row, attribute, house
    out = np.full((N, MAXM, MAXN), -1, np.int64)
    out[R, ap[R, A], np.where(flip[R], n[R] - 1 - H, H)] = vp[R, A, s[R, A, H]]
    return c, out


# --------------------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------------------
_LETTERS = "ABCDEF"
_EXAMPLES = "e.g. 'A1 = B3', 'C2 != #1', 'A3 left-of B1', 'B2 next-to C4', 'A4 at-an-end', 'B3 in-between A1 C2'"
_HEADER = re.compile(r"^houses\s+(\S+)\s+attributes\s+(\S+)$", re.IGNORECASE)
_ROW = re.compile(r"^([A-Za-z])\s*:\s*(.*)$")
_COMMENT = re.compile(r"#(?!\d).*$")  # '#' not followed by a digit starts a comment ('#3' is a house)


def _item_text(op: int) -> str:
    if op >= HOUSE_OP:
        return f"#{op - HOUSE_OP + 1}"
    return f"{_LETTERS[op // 6]}{op % 6 + 1}"


def _clue_text(clue) -> str:
    t, x, y, z = (int(v) for v in clue)
    if t == AT_END:
        return f"{_item_text(x)} at-an-end"
    if t == BETWEEN:
        return f"{_item_text(y)} in-between {_item_text(x)} {_item_text(z)}"
    return f"{_item_text(x)} {CLUE_TYPES[t]} {_item_text(y)}"


def format_text(clues, n: int, m: int, grid=None) -> str:
    """A puzzle in the text format; ``grid`` ((6, 6) [a, h] = v, -1 = unknown) adds answer rows."""
    lines = [f"houses {n} attributes {m}"]
    lines += [_clue_text(c) for c in _clue_array(clues)]
    if grid is not None:
        g = np.asarray(grid)
        for a in range(m):
            lines.append(f"{_LETTERS[a]}: " + " ".join(str(int(v) + 1) if v >= 0 else "." for v in g[a, :n]))
    return "\n".join(lines)


def _operand(tok: str, n: int, m: int, where: str, house_ok: bool) -> int:
    if tok.startswith("#"):
        if not house_ok:
            raise InputError(f"{where}: a house ({tok}) can only be compared with '=' or '!='; {_EXAMPLES}")
        if not tok[1:].isdigit() or not 1 <= int(tok[1:]) <= n:
            raise InputError(f"{where}: bad house {tok!r}; houses are #1..#{n}")
        return HOUSE_OP + int(tok[1:]) - 1
    if len(tok) < 2 or not tok[0].isalpha() or not tok[1:].isdigit():
        raise InputError(f"{where}: bad item {tok!r}; an item is an attribute letter and a value, {_EXAMPLES}")
    a = ord(tok[0].upper()) - 65
    v = int(tok[1:]) - 1
    if not 0 <= a < m:
        raise InputError(f"{where}: attribute {tok[0]!r} is out of range; this puzzle has A..{_LETTERS[m - 1]}")
    if not 0 <= v < n:
        raise InputError(f"{where}: value {v + 1} in {tok!r} is out of range; values are 1..{n}")
    return 6 * a + v


def _parse_clue(line: str, n: int, m: int, where: str) -> list[int]:
    w = line.split()
    if len(w) == 2 and w[1].lower() == "at-an-end":
        return [AT_END, _operand(w[0], n, m, where, False), -1, -1]
    if len(w) == 4 and w[1].lower() == "in-between":
        ops = [_operand(w[i], n, m, where, False) for i in (2, 0, 3)]
        return [BETWEEN, *ops]
    if len(w) == 3 and w[1].lower() in CLUE_TYPES[:5]:
        t = CLUE_TYPES.index(w[1].lower())
        x = _operand(w[0], n, m, where, t in (EQ, NEQ))
        y = _operand(w[2], n, m, where, t in (EQ, NEQ))
        if x >= HOUSE_OP and y >= HOUSE_OP:
            raise InputError(f"{where}: {line!r} compares two houses; compare an item with a house, e.g. 'A1 = #2'")
        if x >= HOUSE_OP:
            x, y = y, x  # the house is always the second operand
        return [t, x, y, -1]
    raise InputError(f"{where}: cannot read clue {line!r}; {_EXAMPLES}")


def parse_blocks(text: str, *, max_houses: int = MAXN, max_attributes: int = MAXM, source: str = "input"):
    """Puzzles in ``text``: a list of ``(clues (k, 4) int64, n, m, grid (6, 6) int64 or None, first line)``.

    ``grid`` is the answer when every answer row is complete, None when none is given (rows of only '.' count as
    not given); a partly filled answer is an error."""
    # (clues, n, m, answer rows {attribute: values}, first line) of the puzzle being read
    out: list[tuple[np.ndarray, int, int, np.ndarray | None, int]] = []
    cur: tuple[list[list[int]], int, int, dict[int, np.ndarray], int] | None = None

    def finish():
        if cur is None:
            return
        clues, n, m, rows, line0 = cur
        grid = None
        filled = [r for r in rows.values() if (r >= 0).any()]
        if filled:
            if len(rows) != m or any((r < 0).any() for r in rows.values()):
                raise InputError(f"{source} line {line0}: the answer rows must give every value of all {m} "
                                 "attributes, or be left out")
            grid = np.full((MAXM, MAXN), -1, np.int64)
            for a, r in rows.items():
                if sorted(r.tolist()) != list(range(n)):
                    raise InputError(f"{source} line {line0}: answer row {_LETTERS[a]} must use each value 1..{n} "
                                     "once")
                grid[a, :n] = r
        out.append((np.array(clues, dtype=np.int64).reshape(-1, 4), n, m, grid, line0))

    for i, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        where = f"{source} line {i}"
        h = _HEADER.match(line)
        if h:
            finish()
            if not (h.group(1).isdigit() and h.group(2).isdigit()):
                raise InputError(f"{where}: expected 'houses N attributes M' with numbers, got {line!r}")
            n, m = int(h.group(1)), int(h.group(2))
            if not 2 <= n <= max_houses:
                raise InputError(f"{where}: {n} houses is out of range; this task takes 2..{max_houses}")
            if not 1 <= m <= max_attributes:
                raise InputError(f"{where}: {m} attributes is out of range; this task takes 1..{max_attributes}")
            cur = ([], n, m, {}, i)
            continue
        if cur is None:
            raise InputError(f"{where}: a puzzle must start with a line 'houses N attributes M'")
        clues, n, m, rows, _ = cur
        r = _ROW.match(line)
        if r:
            a = ord(r.group(1).upper()) - 65
            if not 0 <= a < m:
                raise InputError(f"{where}: answer row {r.group(1)!r} is out of range; rows are A..{_LETTERS[m - 1]}")
            if a in rows:
                raise InputError(f"{where}: answer row {r.group(1).upper()} appears twice")
            vals = r.group(2).split()
            if len(vals) != n:
                raise InputError(f"{where}: answer row {r.group(1).upper()} has {len(vals)} entries, expected {n} "
                                 "(values 1..n or '.')")
            row = np.full(n, -1, np.int64)
            for k, s in enumerate(vals):
                if s in (".", "?"):
                    continue
                if not s.isdigit() or not 1 <= int(s) <= n:
                    raise InputError(f"{where}: bad answer value {s!r}; use 1..{n} or '.'")
                row[k] = int(s) - 1
            rows[a] = row
            continue
        clues.append(_parse_clue(line, n, m, where))
    finish()
    return out


def parse_text(text: str, **kw):
    """Exactly one puzzle (see :func:`parse_blocks`)."""
    blocks = parse_blocks(text, **kw)
    if not blocks:
        raise InputError("empty puzzle; start with 'houses N attributes M', then one clue per line")
    if len(blocks) > 1:
        raise InputError(f"found {len(blocks)} puzzles (each 'houses' line starts one); give exactly one")
    return blocks[0]


# --------------------------------------------------------------------------------------------------------------
# Cache files (compressed numpy, no pickle)
# --------------------------------------------------------------------------------------------------------------
def save_cache(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save arrays to an ``.npz`` file atomically (temp file in the same folder, then ``os.replace``)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mypy reads **arrays as possibly filling savez_compressed's bool allow_pickle; the keys are array names
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
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
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read cache file {path}: {e}") from None
