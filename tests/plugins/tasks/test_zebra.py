"""Zebra task: generator, clue semantics, deductive and exact solvers, token layout, parser, scorer, augmentation."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.errors import ConfigError, InputError
from unmask.core.task import build_task
from unmask.plugins.tasks import _zebra_lib as lib
from unmask.plugins.tasks import zebra as Z

SMALL = {"name": "zebra", "min_houses": 3, "max_houses": 4, "min_attributes": 3, "max_attributes": 3,
         "max_clues": 12, "cache_dir": ""}


def small_task(**kw):
    return build_task({**SMALL, **kw})


# -- an independent reference for clue semantics: brute force over every assignment -------------------------------
def _ref_holds(t, hx, hy, hz, n):
    return {
        lib.EQ: lambda: hx == hy,
        lib.NEQ: lambda: hx != hy,
        lib.LEFT: lambda: hx < hy,
        lib.IMM_LEFT: lambda: hx + 1 == hy,
        lib.NEXT_TO: lambda: np.abs(hx - hy) == 1,
        lib.AT_END: lambda: (hx == 0) | (hx == n - 1),
        lib.BETWEEN: lambda: ((hx < hy) & (hy < hz)) | ((hz < hy) & (hy < hx)),
    }[t]()


def brute_solutions(clues, n, m):
    """All solutions ((k, 6, 6) [a, h] = v) of a small puzzle by enumerating every assignment."""
    perms = np.array(list(itertools.permutations(range(n))))  # (n!, n): perm[h] = value
    hof_p = np.argsort(perms, axis=1)  # house of each value
    idx = np.indices((len(perms),) * m).reshape(m, -1).T  # (K, m)
    hof = hof_p[idx]  # (K, m, n)
    K = len(idx)

    def house(op):
        return np.full(K, op - lib.HOUSE_OP) if op >= lib.HOUSE_OP else hof[:, op // 6, op % 6]

    ok = np.ones(K, bool)
    for t, x, y, z in np.asarray(clues).reshape(-1, 4):
        if t < 0:
            continue
        ok &= _ref_holds(int(t), house(x), house(y) if y >= 0 else None, house(z) if z >= 0 else None, n)
    out = np.full((int(ok.sum()), 6, 6), -1, np.int64)
    out[:, :m, :n] = perms[idx[ok]]
    return out


# -- generator ------------------------------------------------------------------------------------------------------
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**40))
def test_generate_is_deterministic_and_a_prefix(seed):
    t = small_task()
    a = t.generate("train", 40, seed)
    b = t.generate("train", 300, seed)
    for x, y in [(a.inputs, b.inputs[:40]), (a.targets, b.targets[:40]), (a.given, b.given[:40])]:
        np.testing.assert_array_equal(x, y)
    for k in a.meta:
        np.testing.assert_array_equal(a.meta[k], b.meta[k][:40])
    c = t.generate("train", 40, seed + 1)
    assert (c.inputs != a.inputs).any(axis=1).mean() > 0.9


def test_splits_use_different_streams():
    t = build_task({"name": "zebra", "cache_dir": ""})
    tr, te = t.generate("train", 100, 0), t.generate("test", 100, 0)
    seen = {r.tobytes() for r in tr.inputs}
    assert sum(r.tobytes() in seen for r in te.inputs) == 0


def test_sizes_and_clue_limits_follow_options():
    t = build_task({"name": "zebra", "cache_dir": "", "min_houses": 5, "max_houses": 6, "max_clues": 30})
    d = t.generate("train", 100, 3)
    assert set(d.meta["houses"].tolist()) <= {5, 6} and set(d.meta["attributes"].tolist()) <= {3, 4, 5, 6}
    assert d.meta["clues"].max() <= 30 and d.inputs.shape == (100, t.seq_len) == (100, 4 * 30 + 36)


def test_solutions_unique_by_brute_force_and_deductive_solver_finishes():
    t = small_task()
    d = t.generate("train", 30, 11)
    clues = t.decode_clues(d.inputs)
    grids = t.decode_grid(d.targets)
    sizes = t.sizes_from_given(d.given)
    for c, g, (n, m), order in zip(clues, grids, sizes, d.meta["order"]):
        sols = brute_solutions(c, n, m)
        assert len(sols) == 1 and (sols[0] == g).all()
        status, cells = lib.deductive_solve(c, n, m)
        assert status == 1 and sorted(cells.tolist()) == sorted(6 * a + h for a in range(m) for h in range(n))
        assert (order[: n * m] == t.grid0 + (cells // 6) * t.W + cells % 6).all() and (order[n * m:] == -1).all()


def test_order_marks_exactly_the_answer_cells():
    t = build_task({"name": "zebra", "cache_dir": ""})
    d = t.generate("train", 200, 5)
    for row_order, row_given in zip(d.meta["order"], d.given):
        pos = row_order[row_order >= 0]
        assert sorted(pos.tolist()) == np.flatnonzero(~row_given).tolist()
    # every generated puzzle of the full-size task is finished by the deductive solver, with a unique solution
    clues, sizes = t.decode_clues(d.inputs), t.sizes_from_given(d.given)
    for c, (n, m) in zip(clues[:50], sizes[:50]):
        assert lib.deductive_solve(c, n, m)[0] == 1
        assert lib.count_solutions(c, n, m)[0] == 1


def test_hard_split_unique_but_not_deductive():
    t = small_task()
    d = t.generate("hard", 15, 2)
    clues, sizes = t.decode_clues(d.inputs), t.sizes_from_given(d.given)
    for c, g, (n, m) in zip(clues, t.decode_grid(d.targets), sizes):
        sols = brute_solutions(c, n, m)
        assert len(sols) == 1 and (sols[0] == g).all()
        assert lib.deductive_solve(c, n, m)[0] == 0


# -- clue semantics -------------------------------------------------------------------------------------------------
# Solution used below (4 houses): A = 1 2 3 4, B = 2 1 4 3 (values of each attribute in houses 1..4)
SOL_TEXT = "A: 1 2 3 4\nB: 2 1 4 3\n"
CASES = [
    ("A1 = B2", True), ("A1 = B1", False), ("A3 = #3", True), ("A3 = #2", False),
    ("A1 != B1", True), ("A1 != B2", False), ("A2 != #1", True), ("A2 != #2", False),
    ("A1 left-of B3", True), ("A4 left-of B3", False), ("A4 left-of A4", False),
    ("A1 immediate-left B1", True), ("A1 immediate-left B4", False), ("A2 immediate-left A1", False),
    ("A2 next-to B4", True), ("B4 next-to A2", True), ("A1 next-to B4", False), ("A1 next-to B2", False),
    ("A1 at-an-end", True), ("B3 at-an-end", True), ("A2 at-an-end", False),
    ("A2 in-between A1 B3", True), ("A2 in-between B3 A1", True), ("A3 in-between A1 A2", False),
    ("B4 in-between A4 B2", True), ("A2 in-between A2 A4", False),
]


@pytest.mark.parametrize("clue, expected", CASES)
def test_clue_semantics(clue, expected):
    c, n, m, grid, _ = lib.parse_text(f"houses 4 attributes 2\n{clue}\n{SOL_TEXT}")
    assert lib.clue_holds(c[0], grid, n) is expected
    assert bool(lib.check_batch(c[None], np.array([[n, m]]), grid[None])[0]) is expected
    hof = np.argsort(grid[:m, :n], axis=1)
    h = [hof[op // 6, op % 6] if 0 <= op < lib.HOUSE_OP else op - lib.HOUSE_OP for op in c[0, 1:]]
    assert bool(_ref_holds(int(c[0, 0]), *h, n)) is expected


@pytest.mark.parametrize("t", range(7))
def test_solver_agrees_with_brute_force_on_single_clues(t):
    """Random clues of each type on 3-4 houses: exact counting == brute force; the propagation is sound (it never
    reports a contradiction when solutions exist)."""
    rng = np.random.default_rng(t)
    for _ in range(20):
        n, m = int(rng.integers(3, 5)), int(rng.integers(1, 3))
        ops = [6 * int(rng.integers(0, m)) + int(rng.integers(0, n)) for _ in range(3)]
        clue = np.array([t, *ops[: lib.ARITY[t]], *[-1] * (3 - lib.ARITY[t])])
        if t in (lib.EQ, lib.NEQ) and rng.random() < 0.5:
            clue[2] = lib.HOUSE_OP + int(rng.integers(0, n))
        clues = np.stack([clue])
        ref = brute_solutions(clues, n, m)
        count, _ = lib.count_solutions(clues, n, m, limit=10**6)
        assert count == len(ref)
        # soundness of propagation: the solver never rules out a real solution
        k = len(ref)
        assert lib.check_batch(np.repeat(clues[None], k, 0), np.tile([n, m], (k, 1)), ref).all()
        if len(ref):
            assert lib.deductive_solve(clues, n, m)[0] >= 0
        else:
            assert lib.count_solutions(clues, n, m)[0] == 0


def test_deductive_solver_forced_steps():
    # A1 at house 1 and A1 immediate-left B1: B1 must be in house 2 - deduced without guessing
    c, n, m, _, _ = lib.parse_text("houses 3 attributes 2\nA1 = #1\nA1 immediate-left B1\nA2 left-of A3\n"
                                   "B2 = #3\n")
    status, order = lib.deductive_solve(c, n, m)
    assert status == 1
    assert order[0] == 0  # cell (A, house 1) first
    # an underdetermined puzzle gets stuck, a contradictory one is detected
    c, n, m, _, _ = lib.parse_text("houses 3 attributes 1\nA1 next-to A2\n")
    assert lib.deductive_solve(c, n, m)[0] == 0 and lib.count_solutions(c, n, m)[0] == 2
    c, n, m, _, _ = lib.parse_text("houses 3 attributes 1\nA1 = #1\nA1 = #2\n")
    assert lib.deductive_solve(c, n, m)[0] == -1 and lib.count_solutions(c, n, m)[0] == 0


# -- token layout ---------------------------------------------------------------------------------------------------
def test_token_layout_round_trip():
    t = build_task({"name": "zebra", "cache_dir": ""})
    raw = lib.generate_split(50, 4, "train", max_clues=32)
    d = t.from_arrays(raw["clues"], raw["solutions"], raw["info"][:, :2].astype(np.int64), raw["order"])
    assert t.seq_len == 4 * 32 + 36 and t.vocab_size == 57 and t.mask_id == 56
    assert d.inputs.min() >= 0 and d.inputs.max() < t.vocab_size
    np.testing.assert_array_equal(t.decode_clues(d.inputs), raw["clues"].astype(np.int64))
    sols = raw["solutions"].astype(np.int64)
    np.testing.assert_array_equal(t.decode_grid(d.targets), sols)
    np.testing.assert_array_equal(t.sizes_from_given(d.given), raw["info"][:, :2])
    assert d.given[:, : 4 * 32].all()
    # answer cells: masked in inputs, values in targets, PAD (given) outside the puzzle
    cells = slice(4 * 32, None)
    assert ((d.inputs[:, cells] == Z.MASK) == ~d.given[:, cells]).all()
    assert (d.targets[:, cells][~d.given[:, cells]] < 6).all()
    assert (d.targets[:, cells][d.given[:, cells]] == Z.PAD).all()
    assert ((d.inputs == d.targets) | ~d.given).all()
    for name, (k, ids) in t.structure().items():
        assert len(ids) == t.seq_len and 0 <= min(ids) and max(ids) < k, name
    # text round trip: format -> parse gives the same tokens
    for i in range(10):
        p = t.parse(t.format(d.targets[i]))
        np.testing.assert_array_equal(p.inputs[0], d.inputs[i])
        np.testing.assert_array_equal(p.targets[0], d.targets[i])
        q = t.parse(t.format(d.inputs[i]))  # no answer in the text: the unique solution is computed
        np.testing.assert_array_equal(q.targets[0], d.targets[i])
        np.testing.assert_array_equal(q.meta["order"][0], d.meta["order"][i])


def test_read_file(tmp_path):
    t = small_task()
    d = t.generate("test", 5, 0)
    f = tmp_path / "puzzles.txt"
    f.write_text("# five puzzles\n\n" + "\n\n".join(t.format(x) for x in d.targets) + "\n")
    r = t.read_file(str(f))
    np.testing.assert_array_equal(r.inputs, d.inputs)
    np.testing.assert_array_equal(r.targets, d.targets)
    with pytest.raises(InputError, match="not found"):
        t.read_file(str(tmp_path / "missing.txt"))


BAD = [
    ("", "empty"),
    ("A1 = B2", "must start"),
    ("houses 4 attributes 3\nA1 == B2", "cannot read clue"),
    ("houses 9 attributes 3\nA1 = B2", "out of range"),
    ("houses 4 attributes 3\nA1 = D2", "attribute 'D'"),
    ("houses 4 attributes 3\nA5 = B2", "value 5"),
    ("houses 4 attributes 3\nA1 left-of #2", "house"),
    ("houses 4 attributes 3\nA1 = #7", "bad house"),
    ("houses 4 attributes 3\nA1 = #1\nA1 = #2", "no solution"),
    ("houses 3 attributes 3\nA1 = #1\nA: 1 2", "entries"),
    ("houses 3 attributes 3\nA: 1 . 2\nB: 1 2 3\nC: 1 2 3", "every value"),
    ("houses 3 attributes 3\nA: 1 1 2\nB: 1 2 3\nC: 1 2 3", "once"),
    ("houses 3 attributes 3\nA1 = #2\nA: 1 2 3\nB: 1 2 3\nC: 1 2 3", "break clue"),
    ("houses 3 attributes 3\nhouses 3 attributes 3", "exactly one"),
    ("houses x attributes 3", "numbers"),
    ("houses 3 attributes 3\n#1 = #2", "two houses"),
]


@pytest.mark.parametrize("text, what", BAD)
def test_parser_errors(text, what):
    t = small_task()
    with pytest.raises(InputError, match=what) as e:
        t.parse(text)
    assert "\n" not in str(e.value)


def test_parse_too_many_clues_and_ambiguous_puzzle():
    t = small_task(max_clues=2)
    with pytest.raises(InputError, match="max_clues"):
        t.parse("houses 3 attributes 3\nA1 = #1\nA2 = #2\nA3 = #3")
    d = small_task().parse("houses 3 attributes 3  # comment\nA1 = #1\n")
    assert d.targets is None and not d.meta["unique"][0] and not d.meta["deductive"][0]
    e = small_task().parse("houses 3 attributes 3\n#1 = A1  # a house on the left is moved to the right\n")
    np.testing.assert_array_equal(e.inputs, d.inputs)
    assert len(small_task().generate("train", 0, 0)) == 0


def test_options_validated():
    with pytest.raises(ConfigError, match="min_houses"):
        build_task({"name": "zebra", "min_houses": 5, "max_houses": 4})
    with pytest.raises(ConfigError):
        build_task({"name": "zebra", "max_houses": 7})
    with pytest.raises(ConfigError, match=r"task.grid_houses \(4\) must be 0 or >= task.max_houses \(5\)"):
        build_task({"name": "zebra", "max_houses": 5, "grid_houses": 4})


def test_a_bigger_grid_keeps_the_big_layout_for_small_puzzles():
    """grid_houses / grid_attributes: 3-house puzzles in the 6 x 6 layout, token for token the same as those puzzles
    in a 6 x 6 task, so a model of one stage fits the other; a transposed grid of the same length does not."""
    from unmask.core.errors import CheckpointError
    from unmask.core.models import check_task_matches

    big = build_task({"name": "zebra", "max_clues": 12, "cache_dir": ""})
    small = build_task({"name": "zebra", "max_houses": 3, "max_attributes": 4, "grid_houses": 6,
                        "grid_attributes": 6, "max_clues": 12, "cache_dir": ""})
    assert small.seq_len == big.seq_len and small.structure() == big.structure()
    d = small.generate("test", 30, 2)
    assert (d.meta["houses"] == 3).all() and (d.meta["attributes"] <= 4).all()
    same = big.from_arrays(small.decode_clues(d.inputs), small.decode_grid(d.targets),
                           np.stack([d.meta["houses"], d.meta["attributes"]], axis=1))
    assert np.array_equal(same.inputs, d.inputs) and np.array_equal(same.targets, d.targets)
    assert np.array_equal(same.given, d.given) and small.score(d.targets, d)["solved"].all()
    assert list(small.groups(d)["size"]) == [f"3x{a}" for a in d.meta["attributes"]]
    check_task_matches(big, {"task": small.config_dict()}, "small")  # fits
    wide = build_task({"name": "zebra", "max_houses": 6, "max_attributes": 4, "max_clues": 12, "cache_dir": ""})
    tall = build_task({"name": "zebra", "max_houses": 4, "max_attributes": 6, "max_clues": 12, "cache_dir": ""})
    assert wide.seq_len == tall.seq_len
    with pytest.raises(CheckpointError, match="another token layout"):
        check_task_matches(tall, {"task": wide.config_dict()}, "wide")


# -- scoring and augmentation --------------------------------------------------------------------------------------
def test_score():
    t = small_task()
    d = t.generate("test", 20, 1)
    s = t.score(d.targets, d)
    assert s["solved"].all() and np.allclose(s["cell_accuracy"], 1.0) and not s["invalid"].any()
    pred = d.targets.copy()
    blank = np.flatnonzero(~d.given[0])
    pred[0, blank[0]] = (pred[0, blank[0]] + 1) % d.meta["houses"][0]
    s = t.score(pred, d)
    assert not s["solved"][0] and s["solved"][1:].all() and s["invalid"][0]
    assert np.isclose(s["cell_accuracy"][0], 1 - 1 / len(blank))
    s = t.score(d.inputs, d)  # nothing filled
    assert not s["solved"].any() and (s["cell_accuracy"] == 0).all()
    # without targets (an ambiguous user puzzle) any grid satisfying the clues counts as solved
    amb = t.parse("houses 3 attributes 3\nA1 = #1\nB1 = #1\nC1 = #1\n")
    grid = amb.inputs.copy()
    cells = grid[0, t.grid0:].reshape(t.H, t.W)
    cells[:3, :3] = [[0, 1, 2], [0, 2, 1], [0, 1, 2]]
    grid[0, t.grid0:] = cells.reshape(-1)
    assert t.score(grid, amb)["solved"][0]
    cells[0, :3] = [1, 0, 2]
    grid[0, t.grid0:] = cells.reshape(-1)
    assert not t.score(grid, amb)["solved"][0]


def test_report_breaks_results_down_by_size():
    from unmask.core.evaluate import EvalResult
    from unmask.core.report import eval_report

    t = small_task(max_attributes=4)
    d = t.generate("test", 40, 3)
    sizes = [f"{h}x{a}" for h, a in zip(d.meta["houses"], d.meta["attributes"], strict=True)]
    assert list(t.groups(d)["size"]) == sizes and len(set(sizes)) > 1
    pred = d.targets.copy()
    wrong = np.array([s.startswith("4x") for s in sizes])  # one wrong cell in every 4-house puzzle
    for i in np.flatnonzero(wrong):
        j = np.flatnonzero(~d.given[i])[0]
        pred[i, j] = (pred[i, j] + 1) % 4
    r = EvalResult.from_predictions(t, d, "margin", pred, np.ones(len(d)), 1.0)
    by = eval_report(t, "m", "torch", d, [r])["results"][0]["by_size"]
    assert sum(g["n"] for g in by.values()) == len(d) and set(by) == set(sizes)
    for size, g in by.items():
        sel = np.array(sizes) == size
        assert g["n"] == sel.sum() and g["solved"] == (0.0 if size.startswith("4x") else 1.0)
        assert np.isclose(g["cell_accuracy"], r.per_example["cell_accuracy"][sel].mean())
        assert (g["cell_accuracy"] < 1) == size.startswith("4x")


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_augment_keeps_puzzles_valid(seed):
    t = build_task({"name": "zebra", "cache_dir": ""})
    d = t.generate("train", 64, 9)
    a = t.augment(d, np.random.default_rng(seed))
    np.testing.assert_array_equal(a.given, d.given)
    clues, sizes = t.decode_clues(a.inputs), t.sizes_from_given(a.given)
    assert lib.check_batch(clues, sizes, t.decode_grid(a.targets)).all()
    assert (a.meta["clues"] == d.meta["clues"]).all()
    assert (a.inputs != d.inputs).any(axis=1).mean() > 0.9
    for c, (n, m), o in zip(clues[:16], sizes[:16], a.meta["order"][:16]):
        status, cells = lib.deductive_solve(c, n, m)
        assert status == 1
        assert lib.count_solutions(c, n, m)[0] == 1
        assert (o[o >= 0] == t.grid0 + (cells // 6) * t.W + cells % 6).all()


def test_generation_speed():
    t = build_task({"name": "zebra", "cache_dir": ""})
    t.generate("train", 10, 0)  # compile / load the numba cache
    import time

    t0 = time.perf_counter()
    t.generate("train", 512, 1)
    assert 512 / (time.perf_counter() - t0) >= 100


@pytest.mark.parametrize("answer", ["cells", "items"])
def test_train_smoke(tmp_path, answer):
    from unmask.core.training.trainer import train

    out = train("configs/zebra-cpu.toml", [f'out="{tmp_path / "run"}"', "train.steps=5", "train.data_size=200",
                                           "train.val_size=0", 'task.cache_dir=""', "train.batch_size=16",
                                           "train.threads=1", f'task.answer="{answer}"'], progress=False)
    assert out.is_dir() and any(out.iterdir())


def test_token_relations_link_clues_to_the_cells_they_name():
    """``item`` relates a clue operand (a, v) to exactly the answer cell of attribute a holding v; ``house`` a house
    operand to that house's cells; ``clue`` the tokens of one slot; PAD and masked cells hold no item."""
    t = small_task()
    rel = t.token_relations()
    V, L = Z.VOCAB, t.seq_len
    tags = {name: np.asarray(tab).reshape(L, V) for name, (_, tab) in rel.items()}
    assert {name: n for name, (n, _) in rel.items()} == {"item": 36, "attribute": t.H, "house": t.W, "clue": t.C}
    d = t.generate("train", 16, 5)
    pos = np.arange(L)
    for row in d.targets:
        tg = {name: tab[pos, row] for name, tab in tags.items()}
        grid = row[t.grid0:].reshape(t.H, t.W)
        for p in range(t.grid0):
            tok = row[p]
            same_item = {int(q) for q in np.nonzero(tg["item"] == tg["item"][p])[0] if q >= t.grid0}
            if p % Z.FIELDS and Z.ITEM0 <= tok < Z.HOUSE0:
                a, v = divmod(int(tok) - Z.ITEM0, 6)
                (h,) = np.nonzero(grid[a] == v)[0]
                assert same_item == {t.grid0 + a * t.W + int(h)}
            elif Z.HOUSE0 <= tok < Z.TYPE0:
                k = int(tok) - Z.HOUSE0
                cells = {int(q) for q in np.nonzero(tg["house"] == k)[0] if q >= t.grid0}
                assert cells == {t.grid0 + a * t.W + k for a in range(t.H) if grid[a, k] != Z.PAD}
            if tok == Z.PAD:
                assert all(tg[name][p] == -1 for name in tags)
            else:
                assert tg["clue"][p] == p // Z.FIELDS
        masked = row.copy()
        masked[t.grid0:][masked[t.grid0:] != Z.PAD] = Z.MASK
        assert (tags["item"][pos, masked][t.grid0:] == -1).all()


def test_items_layout_holds_the_inverse_answer():
    """``answer = "items"``: the same inputs as the cells layout, each answer position is an item (a, v) holding its
    house; decoding inverts it back to the library's grid, the solver order lands on the items it fixed, the text
    round trip and augmentation keep it, and a grid putting two values in one house is invalid."""
    cells = build_task({"name": "zebra", "cache_dir": ""})
    items = build_task({"name": "zebra", "cache_dir": "", "answer": "items"})
    raw = lib.generate_split(40, 6, "train", max_clues=32)
    sizes = raw["info"][:, :2].astype(np.int64)
    sols = raw["solutions"].astype(np.int64)
    c = cells.from_arrays(raw["clues"], sols, sizes, raw["order"])
    d = items.from_arrays(raw["clues"], sols, sizes, raw["order"])
    assert items.seq_len == cells.seq_len and items.vocab_size == cells.vocab_size
    assert np.array_equal(d.inputs, c.inputs) and np.array_equal(d.given, c.given)
    np.testing.assert_array_equal(items.decode_grid(d.targets), sols)
    assert "answer_value" in items.structure() and "answer_house" not in items.structure()
    for i, (n, m) in enumerate(sizes):
        grid = d.targets[i, items.grid0:].reshape(items.H, items.W)
        for a in range(m):
            for h in range(n):
                assert grid[a, sols[i, a, h]] == Z.HOUSE0 + h  # item (a, v) holds the house v is in
        # the k-th cell the solver fixed, (a, h), is the item (a, sols[a, h])
        for p_cells, p_items in zip(c.meta["order"][i][: n * m], d.meta["order"][i][: n * m], strict=True):
            a, h = divmod(int(p_cells) - cells.grid0, cells.W)
            assert p_items == items.grid0 + a * items.W + sols[i, a, h]
        p = items.parse(items.format(d.targets[i]))
        assert np.array_equal(p.targets[0], d.targets[i]) and np.array_equal(p.meta["order"][0], d.meta["order"][i])
        q = items.parse(items.format(d.inputs[i]))
        assert np.array_equal(q.targets[0], d.targets[i])
    s = items.score(d.targets, d)
    assert s["solved"].all() and not s["invalid"].any() and not items.score(c.targets, d)["solved"].any()
    pred = d.targets.copy()
    row = pred[0, items.grid0: items.grid0 + items.W]
    row[1] = row[0]  # values 0 and 1 of attribute A in one house
    s = items.score(pred, d)
    assert s["invalid"][0] and not s["solved"][0] and np.isclose(s["cell_accuracy"][0], 1 - 1 / (~d.given[0]).sum())
    assert (items.decode_grid(pred)[0, 0] == -1).sum() >= 1
    a = items.augment(d, np.random.default_rng(3))
    assert lib.check_batch(items.decode_clues(a.inputs), sizes, items.decode_grid(a.targets)).all()
    # an ambiguous puzzle: no answer, and the order of the cells deduction fixes is still placed on their items
    text = "houses 3 attributes 3\nA1 = #1\nB2 = #3\n"
    amb_c, amb_i = cells.parse(text), items.parse(text)
    assert amb_i.targets is None
    fixed_c = amb_c.meta["order"][0][amb_c.meta["order"][0] >= 0]
    fixed_i = amb_i.meta["order"][0][amb_i.meta["order"][0] >= 0]
    assert len(fixed_i) == len(fixed_c) == 2
    assert sorted(fixed_i.tolist()) == [items.grid0 + 0, items.grid0 + items.W + 1]  # items A1 and B2


def test_items_layout_relates_each_clue_operand_to_its_item_before_it_is_filled():
    t = small_task(answer="items")
    rel = t.token_relations()
    V, L = Z.VOCAB, t.seq_len
    tags = {name: np.asarray(tab).reshape(L, V) for name, (_, tab) in rel.items()}
    d = t.generate("train", 16, 5)
    pos = np.arange(L)
    for full in d.targets:
        masked = np.where(d.given[0] | (pos < t.grid0), full, Z.MASK)
        masked[t.grid0:][full[t.grid0:] == Z.PAD] = Z.PAD
        for row in (full, masked):
            tg = {name: tab[pos, row] for name, tab in tags.items()}
            for p in range(t.grid0):
                tok = row[p]
                if p % Z.FIELDS and Z.ITEM0 <= tok < Z.HOUSE0:
                    a, v = divmod(int(tok) - Z.ITEM0, 6)
                    same = {int(q) for q in np.nonzero(tg["item"] == tg["item"][p])[0] if q >= t.grid0}
                    assert same == {t.grid0 + a * t.W + v}
                elif Z.HOUSE0 <= tok < Z.TYPE0:  # a house operand relates to the answer positions holding it
                    k = int(tok) - Z.HOUSE0
                    got = {int(q) for q in np.nonzero(tg["house"] == k)[0] if q >= t.grid0}
                    assert got == {int(q) for q in np.nonzero(row == tok)[0] if q >= t.grid0}
        assert (tags["house"][pos, masked][t.grid0:] == -1).all()  # a masked item's house is not known yet


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell one thread from all of them")
def test_parallel_kernels_keep_torch_thread_count():
    """numba's OpenMP layer shares libgomp with torch; its kernels must not leave torch on every core."""
    import torch

    from unmask.plugins.tasks import _sudoku_lib

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        arr = lib.generate_chunk(0, "train", 0, max_houses=4, max_attributes=4, max_clues=12, size=8)
        assert torch.get_num_threads() == 1
        sizes = arr["info"][:, :2].astype(np.int64)
        lib.solve_batch(arr["clues"], sizes)
        assert lib.check_batch(arr["clues"], sizes, arr["solutions"]).all()
        assert torch.get_num_threads() == 1
        _sudoku_lib.step_solve_batch(_sudoku_lib.generate_puzzles(4, 0)[0])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
