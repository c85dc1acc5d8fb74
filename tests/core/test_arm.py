"""Autoregressive baselines: the (row, col, value) layout, its loss mask, greedy decoding, invalid-position masking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unmask.core.engine import FunctionEngine
from unmask.core.errors import InputError
from unmask.core.task import Dataset, build_task
from unmask.plugins.objectives.arm import ArmLayout

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def sudoku(tmp_path_factory):
    task = build_task({"name": "sudoku", "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    return task, task.generate("test", 12, 5)


@pytest.fixture(scope="module")
def zebra(tmp_path_factory):
    task = build_task({"name": "zebra", "max_houses": 4, "max_attributes": 4, "max_clues": 12,
                       "cache_dir": str(tmp_path_factory.mktemp("zcache"))})
    return task, task.generate("test", 10, 3)


def oracle(layout: ArmLayout, data: Dataset) -> FunctionEngine:
    """An engine that knows every answer: at each position, a one-hot logit on the encoded sequence's next token."""
    seqs, _ = layout.encode(data)
    n_pre = layout.t0 + 3 * data.given[:, layout.cell_pos].sum(axis=1)

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        out = torch.full((B, L, layout.vocab_size), -5.0)
        t = tokens.numpy()
        for b in range(B):
            hits = [i for i in range(len(seqs)) if np.array_equal(t[b, : n_pre[i]], seqs[i, : n_pre[i]])]
            assert len(hits) == 1
            nxt = torch.from_numpy(seqs[hits[0], 1:])
            out[b, torch.arange(L - 1), nxt] = 5.0
        return out

    return FunctionEngine(fn, layout.vocab_size, layout.seq_len)


@pytest.mark.parametrize("order", ["solver", "row_major"])
def test_encode_layout_loss_mask_and_round_trip(sudoku, order):
    task, data = sudoku
    lay = ArmLayout.for_task(task, order)
    assert (lay.R, lay.C, lay.seq_len, lay.vocab_size) == (9, 9, 244, 10 + 9 + 9 + 1)
    seq, mask = lay.encode(data)
    assert seq.shape == mask.shape == (len(data), 244) and seq.dtype == np.int64 and mask.dtype == bool
    assert (seq[:, 0] == lay.bos).all()
    rows, cols, vals = seq[:, 1::3] - lay.row0, seq[:, 2::3] - lay.col0, seq[:, 3::3]
    assert ((rows >= 0) & (rows < 9) & (cols >= 0) & (cols < 9) & (vals >= 0) & (vals < 9)).all()
    pos = rows * 9 + cols
    n_given = data.given.sum(axis=1)
    for i in range(len(data)):
        assert sorted(pos[i]) == list(range(81))  # every cell once
        g = n_given[i]
        assert list(pos[i, :g]) == sorted(np.flatnonzero(data.given[i]))  # givens first, row-major
        answer = list(pos[i, g:])
        if order == "row_major":
            assert answer == sorted(answer)
        else:  # the solver's placement order (it finishes test-split puzzles, so it covers every blank)
            o = data.meta["order"][i]
            assert answer == list(o[o >= 0])
        # the loss scores exactly the answer triples: their row, column and value tokens
        assert not mask[i, : 1 + 3 * g].any() and mask[i, 1 + 3 * g:].all()
        assert mask[i].sum() == 3 * (81 - g)
    assert (vals == np.take_along_axis(data.targets, pos, axis=1)).all()
    assert (lay.decode_sequences(seq, data) == data.targets).all()


@pytest.mark.parametrize("order", ["solver", "row_major"])
def test_oracle_engine_solves_everything(sudoku, order):
    task, data = sudoku
    lay = ArmLayout.for_task(task, order)
    res = lay.evaluate(oracle(lay, data), data, batch_size=5, trace=True)
    assert res.strategy == "arm" and res.n == len(data)
    assert res.solved == 1.0 and res.cell_accuracy == 1.0
    assert (res.predictions == data.targets).all()
    blanks = (~data.given).sum(axis=1)
    assert (res.per_example["nfe"] == 3 * blanks).all() and res.nfe_mean == pytest.approx(3 * blanks.mean())
    # the trace follows the fill order: blanks are written on passes 3, 6, 9, ... in that order
    seq, _ = lay.encode(data)
    for i in range(len(data)):
        g = int(data.given[i].sum())
        answer = (seq[i, 1::3] - lay.row0)[g:] * 9 + (seq[i, 2::3] - lay.col0)[g:]
        assert list(res.order[i, answer]) == [3 * (k + 1) for k in range(len(answer))]
        assert (res.order[i, data.given[i]] == 0).all()


def test_filled_and_given_cells_are_never_written_again(sudoku):
    """An engine that always asks for the first given cell (row 0 / col 0 on ties) and value 0: decoding masks the
    row and column tokens of filled cells, so every blank is written exactly once and the givens stay."""
    task, data = sudoku
    lay = ArmLayout.for_task(task, "row_major")
    first = np.argmax(data.given, axis=1)  # one given cell per row

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        out = torch.zeros(B, L, lay.vocab_size)
        out[:, :, lay.row0 : lay.row0 + 9] = -torch.arange(9.0)  # lower rows / columns preferred
        out[:, :, lay.col0 : lay.col0 + 9] = -torch.arange(9.0)
        out[:, :, 0] = 1.0
        out[:, :, task.mask_id] = 50.0  # the mask token is never a value
        out[:, :, lay.bos] = 60.0  # nor is BOS anything
        return out

    engine = FunctionEngine(fn, lay.vocab_size, lay.seq_len)
    pred, nfe, order, seq = lay.decode(engine, data, trace=True)
    assert (pred[data.given] == data.inputs[data.given]).all()
    assert (pred[~data.given] == 0).all()
    for i in range(len(data)):
        g = int(data.given[i].sum())
        written = (seq[i, 1::3] - lay.row0)[g:] * 9 + (seq[i, 2::3] - lay.col0)[g:]
        blanks = np.flatnonzero(~data.given[i])
        assert list(written) == list(blanks)  # each blank once, lowest free cell first; given cells skipped
        assert first[i] not in written
        assert sorted(order[i][~data.given[i]]) == [3 * (k + 1) for k in range(len(blanks))]
    assert (nfe == 3 * (~data.given).sum(axis=1)).all()


def test_solver_order_needs_meta(sudoku):
    task, data = sudoku
    bare = Dataset(data.inputs, data.given, data.targets)
    with pytest.raises(InputError, match="row_major"):
        ArmLayout.for_task(task, "solver").encode(bare)
    ArmLayout.for_task(task, "row_major").encode(bare)
    # a partial solver order (e.g. the hard split): the cells it lacks follow row-major
    part = Dataset(data.inputs[:1], data.given[:1], data.targets[:1], {"order": data.meta["order"][:1, :3]})
    seq, _ = ArmLayout.for_task(task, "solver").encode(part)
    g = int(part.given.sum())
    lay = ArmLayout.for_task(task, "solver")
    pos = (seq[0, 1::3] - lay.row0) * 9 + (seq[0, 2::3] - lay.col0)
    assert list(pos[g : g + 3]) == list(part.meta["order"][0, :3])
    rest = list(pos[g + 3:])
    assert rest == sorted(rest)


@pytest.mark.parametrize(("cells", "shape"), [("task", (4, 4, 1 + 48 + 3 * 16)), ("square", (8, 8, 1 + 3 * 64))])
def test_zebra_layouts(zebra, cells, shape):
    """Zebra has no board covering its sequence: by default its answer grid (attribute x house) is written as
    triples after the clues, read as plain tokens; ``square`` makes all 64 positions cells of an 8 x 8 grid."""
    task, data = zebra
    assert task.board_shape() is None and task.cell_grid() == (48, 4, 4)
    for order in ("solver", "row_major"):
        lay = ArmLayout.for_task(task, order, cells)
        assert (lay.R, lay.C, lay.seq_len) == shape
        seq, mask = lay.encode(data)
        assert (lay.decode_sequences(seq, data) == data.targets).all()
        assert (mask.sum(axis=1) == 3 * (~data.given).sum(axis=1)).all()
        res = lay.evaluate(oracle(lay, data), data, batch_size=4)
        assert res.solved == 1.0
        if cells == "task":  # the clue section verbatim, then triples whose row is the attribute
            assert (seq[:, 1:49] == data.inputs[:, :48]).all() and len(lay.context) == 48
            cell = (seq[:, 49::3] - lay.row0) * 4 + (seq[:, 50::3] - lay.col0)
            full = np.where(data.given, data.inputs, data.targets)
            assert (np.take_along_axis(full, 48 + cell, axis=1) == seq[:, 51::3]).all()
            slots = lay.spec_task().structure()["slot"]
            assert slots[0] == 5 and slots[1][1:49] == (4,) * 48 and slots[1][49:52] == (0, 1, 2)
    # augmentation recomputes the solver order, so augmented batches encode in solver order
    aug = task.augment(data, np.random.default_rng(0))
    seq, _ = ArmLayout.for_task(task, "solver", cells).encode(aug)
    assert seq.shape == (len(data), shape[2])


def test_saved_configs_without_arm_cells_load_the_square_layout(zebra):
    from unmask.core.objective import build_objective
    from unmask.core.training.trainer import TrainOptions

    task, _ = zebra
    assert ArmLayout.for_config(task, {"train": {"order": "solver"}}).cells == "square"
    assert build_objective(task, {"objective": "arm"}).layout.cells == "square"  # type: ignore[attr-defined]
    assert TrainOptions().arm_cells == "task"  # what a new run trains (and saves)
    assert ArmLayout.for_config(task, {"train": {"arm_cells": "task"}}).seq_len == 97


def test_cell_grid_errors(zebra):
    from unmask.core.errors import ConfigError, PluginError

    task, data = zebra

    class Bad:
        name, seq_len, vocab_size, mask_id = "bad", 10, 4, 3

        def cell_grid(self):
            return (4, 2, 4)  # 8 cells from position 4 overrun 10 positions

    with pytest.raises(PluginError, match="task 'bad' declares a cell grid of 2 x 4 at position 4"):
        ArmLayout.for_task(Bad())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ARM cells 'grid' is unknown"):
        ArmLayout.for_task(task, "solver", "grid")
    given = data.given.copy()
    given[0, 5] = False  # a clue token left to fill
    bad = Dataset(data.inputs, given, data.targets, dict(data.meta))
    with pytest.raises(InputError, match="outside its answer grid.*arm_cells = 'square'"):
        ArmLayout.for_task(task, "row_major").encode(bad)


def test_spec_task_builds_a_causal_model(sudoku):
    from unmask.core.models import build_model

    task, _ = sudoku
    spec = ArmLayout.for_task(task, "solver").spec_task()
    model, _ = build_model(spec, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2}, causal=True)
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len))
    y = model(x)
    assert y.shape == (2, spec.seq_len, spec.vocab_size)
    x2 = x.clone()
    x2[:, 100:] = 0
    assert torch.allclose(model(x2)[:, :100], y[:, :100], atol=1e-5)  # causal: the future does not leak


@pytest.mark.parametrize("positions", ["both", "rope"])
def test_kv_cache_logits_equal_the_full_forward(sudoku, positions):
    """Feeding a causal transformer in chunks through its key/value cache gives the full forward's logits."""
    from unmask.core.models import build_model

    task, _ = sudoku
    lay = ArmLayout.for_task(task, "solver")
    torch.manual_seed(1)
    model, _ = build_model(lay.spec_task(), {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4,
                                             "positions": positions}, causal=True)
    model.eval()
    x = torch.randint(0, lay.vocab_size, (3, lay.seq_len))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(3)
        cuts = [0, 1, 37, 38, 120, 200, lay.seq_len]  # chunks of 1, 36, 1, 82, 80 and 44 positions
        parts = [model.forward_cached(x[:, a:b], a, cache) for a, b in zip(cuts, cuts[1:])]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_kv_cache_is_refused_for_a_bidirectional_model(sudoku):
    from unmask.core.models import build_model

    task, _ = sudoku
    model, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2})
    with pytest.raises(ValueError, match="causal"):
        model.new_cache(1)


@pytest.mark.parametrize("puzzle", ["sudoku", "zebra"])
def test_prefix_only_and_kv_cache_decoding_match_full_length(request, puzzle):
    """Feeding a causal model only the live prefix, or one token at a time through its key/value cache, gives the
    same greedy decoding as the full-length sequence (Zebra: with its clues as context before the triples)."""
    from unmask.core.engine import TorchEngine
    from unmask.core.models import build_model

    task, data = request.getfixturevalue(puzzle)
    lay = ArmLayout.for_task(task, "solver")
    torch.manual_seed(0)
    model, _ = build_model(lay.spec_task(), {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
                           causal=True)
    engine = TorchEngine(model, {})
    part = data.take(slice(0, 4))
    assert engine.supports_cache
    a = lay.decode(engine, part, prefix_only=True, kv_cache=False, trace=True)
    b = lay.decode(engine, part, prefix_only=False, kv_cache=False, trace=True)
    c = lay.decode(engine, part, kv_cache=True, trace=True)
    for x in (b, c):
        assert all((u == v).all() for u, v in zip(a, x))
    blank = ~part.given
    assert (a[2][blank] > 0).all() and (a[2][~blank] == 0).all()  # every blank written once, nothing else
    assert (a[1] == 3 * blank.sum(axis=1)).all()


def test_decoders_dispatch_through_the_objective_registry(sudoku):
    """``unmask.core.objective.decoders``: an MDM gets decode-loop strategies and refuses the ARM's decoder; an ARM
    gets its greedy evaluator (with the recorded train.order) and refuses strategies and options."""
    from unmask.core.objective import decoders
    from unmask.core.registry import objectives
    from unmask.core.strategy import Strategy

    assert {"mdm", "arm"} <= set(objectives.names())
    task, _ = sudoku
    mdm = FunctionEngine(lambda t: t, 10, 81, config={"train": {"objective": "mdm"}})
    got = decoders(mdm, task, ["vanilla", {"name": "margin", "noise": "gumbel", "noise_scale": 0.5}], steps=7)
    assert all(isinstance(d, Strategy) for d in got)
    assert [d.name for d in got] == ["vanilla", "margin"] and got[1].options.steps == 7
    with pytest.raises(InputError, match="train.objective = 'arm'.*trained with 'mdm'"):
        decoders(mdm, task, ["margin", "arm"])
    arm = FunctionEngine(lambda t: t, 29, 244, config={"train": {"objective": "arm", "order": "row_major"}})
    (lay,) = decoders(arm, task, ["arm"])
    assert isinstance(lay, ArmLayout) and lay.order == "row_major"
    with pytest.raises(InputError, match="autoregressive.*'arm' only, not margin"):
        decoders(arm, task, ["arm", "margin"])
    with pytest.raises(InputError, match="takes no options"):
        decoders(arm, task, [{"name": "arm", "noise": "gumbel"}])


def test_train_arm_then_eval_cli(tmp_path, capsys):
    """``unmask train`` with train.objective = "arm" (a few steps), the checkpoint loads as a causal model, and
    ``unmask eval --strategies arm`` decodes with it; MDM strategies on it are a one-line error."""
    from unmask.core.cli import main
    from unmask.core.models import load_model
    from unmask.core.training.trainer import train

    sets = [f'out="{tmp_path / "run"}"', "train.steps=3", "train.batch_size=4", "train.data_size=16",
            "train.val_size=2", "train.val_every=3", "train.warmup_steps=1", "train.threads=1",
            f'task.cache_dir="{tmp_path / "cache"}"', "backbone.d_model=32", "backbone.n_layers=1",
            "backbone.n_heads=2", "train.order=row_major", "train.flops=0", "train.compile=false"]
    final = train(str(ROOT / "configs" / "sudoku-arm.toml"), sets, progress=False)
    task, model, cfg = load_model(final)
    assert cfg["train"]["objective"] == "arm" and model.spec.causal and model.spec.seq_len == 244
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_arm" in r for r in recs)
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(final), "--generate", "3", "--seed", "1", "--strategies", "arm",
               "--json", str(out), "--batch-size", "2"])
    assert rc == 0
    rep = json.loads(out.read_text())
    (r,) = rep["results"]
    assert r["strategy"] == "arm" and r["n"] == 3 and r["options"]["order"] == "row_major"
    data = task.generate("test", 3, 1)
    assert r["nfe_mean"] == pytest.approx(3 * (~data.given).sum(axis=1).mean())
    assert main(["eval", "--model", str(final), "--generate", "2", "--strategies", "margin"]) == 2
    # unmask solve dispatches through the objective too: the ARM decodes one puzzle greedily, every blank written
    # once (3 passes per blank); unmask serve, which steps the decode loop, refuses it in one line
    puzzle = "".join(str(d) for d in np.where(data.given[0], data.inputs[0] + 1, 0))
    capsys.readouterr()
    rc = main(["solve", "--model", str(final), "--strategy", "arm", puzzle])
    printed = capsys.readouterr().out
    assert rc in (0, 1) and f"{3 * int((~data.given[0]).sum())} forward passes; strategy arm" in printed
    assert main(["serve", "--model", str(final), "--strategy", "arm"]) == 2
    assert "steps the decode loop's strategies; 'arm'" in capsys.readouterr().err


def test_row_elimination_baseline_of_the_token_accuracy_tool(sudoku):
    """tools/arm_token_accuracy.py's reference: a guesser that knows only that a grid row holds distinct values is
    right 1/k of the time with k cells of the row open, whatever the order (a row with k open cells adds 1 + 1/2 + ...
    + 1/k); a grid whose rows repeat values has no such reference."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("arm_token_accuracy_tool", ROOT / "tools" / "arm_token_accuracy.py")
    tool = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(tool)  # type: ignore[union-attr]
    task, data = sudoku
    k = (~data.given).reshape(len(data), 9, 9).sum(axis=2)  # open cells per row
    expect = sum(sum(1 / j for j in range(1, n + 1)) for n in k.ravel()) / k.sum()
    for order in ("solver", "row_major"):
        assert tool.row_elimination(ArmLayout.for_task(task, order), data) == pytest.approx(expect)
    bad = Dataset(data.inputs, data.given, np.zeros_like(data.targets), dict(data.meta))
    assert tool.row_elimination(ArmLayout.for_task(task, "row_major"), bad) is None


class _GridTask:
    """A third-party-like task: ``L`` positions, an ``R x C`` answer grid at ``offset``, every other position given."""

    name, mask_id = "grid", 0

    def __init__(self, L: int, offset: int, R: int, C: int, V: int) -> None:
        self.seq_len, self.vocab_size, self._grid = L, V, (offset, R, C)

    def board_shape(self):
        return None

    def cell_grid(self):
        return self._grid

    def score(self, pred, data):
        right = pred == data.targets
        return {"solved": right.all(axis=1), "cell_accuracy": right.mean(axis=1)}


def test_any_cell_grid_round_trips_and_decodes():
    """For any grid placement, given pattern and fill order: the context is copied verbatim, the sequence decodes back
    to the targets, the loss scores exactly the answer triples, and an engine that knows the answers solves all."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(draw):
        R, C = draw.draw(st.integers(1, 4)), draw.draw(st.integers(1, 4))
        before, after = draw.draw(st.integers(0, 6)), draw.draw(st.integers(0, 6))
        L, V, N = before + R * C + after, 5, 3
        task = _GridTask(L, before, R, C, V)
        seed = draw.draw(st.integers(0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        targets = rng.integers(1, V, size=(N, L))
        given_ = np.ones((N, L), dtype=bool)
        given_[:, before : before + R * C] = rng.random((N, R * C)) < 0.4
        inputs = np.where(given_, targets, 0)
        order = np.full((N, R * C), -1)
        for b in range(N):  # a random fill order over the answer positions, as a solver would give it
            blanks = rng.permutation(np.flatnonzero(~given_[b]))
            order[b, : len(blanks)] = blanks
        data = Dataset(inputs, given_, targets, {"order": order})
        for fill in ("solver", "row_major"):
            lay = ArmLayout.for_task(task, fill)  # type: ignore[arg-type]
            assert lay.seq_len == 1 + before + after + 3 * R * C
            seq, mask = lay.encode(data)
            assert (seq[:, 1 : 1 + before] == targets[:, :before]).all()
            assert (seq[:, 1 + before : lay.t0] == targets[:, before + R * C :]).all()
            assert (lay.decode_sequences(seq, data) == targets).all()
            assert (mask.sum(axis=1) == 3 * (~given_).sum(axis=1)).all()
            if fill == "solver":  # the answer cells come in the given order
                cells = (seq[:, lay.t0 :: 3] - lay.row0) * C + (seq[:, lay.t0 + 1 :: 3] - lay.col0) + before
                for b in range(N):
                    k = int(given_[b, before : before + R * C].sum())
                    n = int((~given_[b]).sum())
                    assert list(cells[b, k : k + n]) == list(order[b, :n])
            for b in range(N):  # one example at a time: random tiny puzzles may share a prefix
                part = data.take(slice(b, b + 1))
                res = lay.evaluate(oracle(lay, part), part)
                assert res.solved == 1.0 and res.nfe_mean == 3 * (~given_[b]).sum()

    check()


def test_solve_shows_a_zebra_order_on_its_answer_grid(tmp_path, capsys):
    """``unmask solve --show-order`` on a task without a board prints the commit order on its answer grid
    (Task.cell_grid) when every position outside it is given: one row per attribute, givens as '.'."""
    from unmask.core.cli import main

    task = build_task({"name": "zebra", "cache_dir": ""})
    data = task.generate("test", 1, 3)
    puzzle = tmp_path / "zebra.txt"
    puzzle.write_text(task.format(data.inputs[0]) + "\n")
    model = ROOT / "models" / "zebra-default-arm-grid"
    rc = main(["solve", "--model", str(model), "--strategy", "arm", "--show-order", "--threads", "1", str(puzzle)])
    out = capsys.readouterr().out
    assert rc in (0, 1) and "order (forward pass at which each position of the answer grid" in out
    rows = out.split("was committed; '.' = given):\n")[1].strip().splitlines()
    H, W = task.cell_grid()[1:]  # type: ignore[index]
    assert len(rows) == H
    cells = [c for r in rows for c in r.split()]
    blank = ~data.given[0, task.cell_grid()[0]:]  # type: ignore[index]
    assert len(cells) == H * W and [c != "." for c in cells] == list(blank)
    assert sorted(int(c) for c in cells if c != ".") == list(range(3, 3 * int(blank.sum()) + 1, 3))
