"""Zebra (Einstein) puzzles: n houses x m attributes, 7 clue types (Kim et al. 2025, Sec. 5; Shah et al. 2024).

Clue semantics, the deductive solver, generation and the text format are in :mod:`._zebra_lib` (see its docstring).

Token layout (``C = max_clues``, ``W = grid_houses`` (default ``max_houses``), ``H = grid_attributes`` (default
``max_attributes``); ``seq_len = 4 C + H W``):

* positions ``[0, 4C)``: ``C`` clue slots of 4 tokens ``[type, x, y, z]``; an operand is one token for an
  (attribute, value) item or a house (``=``/``!=`` only), unused operands and empty slots are PAD. Real clues fill
  the first slots, in random order. ``in-between`` is ``[type, x, y, z]`` with y between x and z.
* positions ``[4C, 4C + HW)``: the answer grid, row-major, one row per attribute. ``answer = "cells"`` (default):
  column = house (0 = leftmost), a cell holds the value token of that attribute in that house. ``answer =
  "items"``: column = value, a cell holds the house token of the house that item (attribute, value) is in, so each
  answer position stands for one item whatever is filled, and a clue operand naming it relates to it before it is
  decoded. Both are the same answer (one is the other's inverse permutation per attribute). Cells outside the
  puzzle's m x n are PAD.
* ``given`` = the whole clue section and the PAD cells; the model fills the m x n answer cells.

Vocabulary (57 ids, fixed whatever the options): values ``0..5``; items ``6 + 6a + v`` (a, v in 0..5); houses
``42 + k``; clue types ``48 + t`` in the order ``= != left-of immediate-left next-to at-an-end in-between``;
PAD 55; MASK 56. ``structure()`` gives each position its segment (clue / answer), clue slot, clue field
(type / x / y / z), answer attribute and answer column (house or value; each with a "not applicable" class).

Splits: "train" and "test" are puzzles the deductive solver finishes (disjoint seed streams); "hard" are puzzles
with a unique solution that it cannot finish (a guess is needed); these need the exact solver and generate at
~80/s on 2 cores instead of ~3000/s. Meta per example:
``order`` (N, H*W) int64 = sequence positions of the answer cells in the order the deductive solver determined them,
-1 padded (partial for "hard"); ``houses``, ``attributes``, ``clues`` (N,) int64.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np

from unmask.core.config import Section
from unmask.core.errors import ConfigError, InputError
from unmask.core.files import check_writable, read_text
from unmask.core.registry import tasks
from unmask.core.task import Dataset, Task
from unmask.plugins.tasks import _zebra_lib as lib

VALUE0 = 0
ITEM0 = 6
HOUSE0 = 42
TYPE0 = 48
PAD = 55
MASK = 56
VOCAB = 57
FIELDS = 4


class ZebraOptions(Section):
    min_houses: Annotated[int, msgspec.Meta(ge=3, le=6)] = 3
    max_houses: Annotated[int, msgspec.Meta(ge=3, le=6)] = 6
    """Houses per puzzle, uniform in [min_houses, max_houses]; max_houses is the answer grid's width unless
    grid_houses says otherwise."""
    min_attributes: Annotated[int, msgspec.Meta(ge=3, le=6)] = 3
    max_attributes: Annotated[int, msgspec.Meta(ge=3, le=6)] = 6
    """Attributes per puzzle, uniform in [min_attributes, max_attributes]; max_attributes is the grid's height
    unless grid_attributes says otherwise."""
    grid_houses: Annotated[int, msgspec.Meta(ge=0, le=6)] = 0
    grid_attributes: Annotated[int, msgspec.Meta(ge=0, le=6)] = 0
    """The answer grid's width and height (0 = max_houses, max_attributes). A grid bigger than the puzzles keeps the
    token layout of bigger ones: a curriculum stage trained on small puzzles warm-starts (``train.init_from``) the
    model of a later stage with larger ones, and the other way round."""
    answer: Literal["cells", "items"] = "cells"
    """What an answer position stands for: ``"cells"``, the (attribute, house) cell, filled with the value there;
    ``"items"``, the (attribute, value) item, filled with its house. With ``"items"`` every answer position is tied
    to the clue operands naming its item from the start (``backbone.relation_bias``), not only once it is filled."""
    max_clues: Annotated[int, msgspec.Meta(ge=1, le=128)] = 32
    """Clue slots in the sequence; a generated puzzle needing more is redrawn (6x6 pruned puzzles: mean 25,
    max ~32; 4x4: max ~12)."""
    prune: bool = True
    """Remove clues (random order) while the deductive solver still finishes: fewer, less redundant clues."""
    cache_dir: str = "data/cache"
    """Where generated sets are cached (compressed numpy, no pickle); empty = no cache."""


@tasks.register("zebra")
class Zebra(Task):
    """Einstein puzzles: fill the attribute x house grid from the clues; solved = the whole grid right."""

    Options = ZebraOptions
    options: ZebraOptions
    name = "zebra"

    def __init__(self, options: ZebraOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        for what in ("houses", "attributes"):
            lo, hi = getattr(o, f"min_{what}"), getattr(o, f"max_{what}")
            if lo > hi:
                raise ConfigError(f"task.min_{what} ({lo}) must be <= task.max_{what} ({hi})")
            grid = getattr(o, f"grid_{what}")
            if grid and grid < hi:
                raise ConfigError(f"task.grid_{what} ({grid}) must be 0 or >= task.max_{what} ({hi}): the answer "
                                  "grid holds the biggest puzzle")
        self.C = o.max_clues
        self.W = o.grid_houses or o.max_houses
        self.H = o.grid_attributes or o.max_attributes
        self.grid0 = FIELDS * self.C
        self.items = o.answer == "items"
        self.answer0 = HOUSE0 if self.items else VALUE0  # the token of answer 0 (house 0 or value 0)

    # -- layout -------------------------------------------------------------------------------------------------
    vocab_size = VOCAB
    mask_id = MASK

    @property
    def seq_len(self) -> int:
        return self.grid0 + self.H * self.W

    def cell_grid(self) -> tuple[int, int, int]:
        """The answer grid (one row per attribute) after the clue section, which every example gives."""
        return self.grid0, self.H, self.W

    def structure(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        C, H, W = self.C, self.H, self.W
        k = np.arange(self.seq_len)
        clue = k < self.grid0
        cell = np.where(clue, 0, k - self.grid0)
        feats = {
            "segment": (2, np.where(clue, 0, 1)),
            "clue_slot": (C + 1, np.where(clue, k // FIELDS, C)),
            "clue_field": (FIELDS + 1, np.where(clue, k % FIELDS, FIELDS)),
            "answer_attribute": (H + 1, np.where(clue, H, cell // W)),
            f"answer_{'value' if self.items else 'house'}": (W + 1, np.where(clue, W, cell % W)),
        }
        return {name: (n, tuple(int(x) for x in ids)) for name, (n, ids) in feats.items()}

    def token_relations(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """What a clue refers to, for ``backbone.relation_bias`` (tags of (position, token); equal tags relate):

        * ``item`` (36 tags): a clue operand naming item (a, v) and the answer cell of attribute a holding value v
          (``answer = "items"``: the answer position of item (a, v), masked or not);
        * ``attribute`` (H): a clue operand naming an item of attribute a and the answer cells of attribute a;
        * ``house`` (W): a clue operand naming house k and the answer cells of house k (``"items"``: the answer
          positions holding house k);
        * ``clue`` (C): the tokens of one clue slot. PAD relates to nothing.
        """
        C, H, W, V, L = self.C, self.H, self.W, VOCAB, self.seq_len
        tags = {name: np.full((L, V), -1, np.int64) for name in ("item", "attribute", "house", "clue")}
        tok = np.arange(V)
        item = (tok >= ITEM0) & (tok < HOUSE0)
        house = (tok >= HOUSE0) & (tok < TYPE0)
        for pos in range(self.grid0):
            slot, fld = divmod(pos, FIELDS)
            tags["clue"][pos, tok != PAD] = slot
            if fld:
                tags["item"][pos, item] = tok[item] - ITEM0
                a = (tok[item] - ITEM0) // 6
                tags["attribute"][pos, item] = np.where(a < H, a, -1)
                k = tok[house] - HOUSE0
                tags["house"][pos, house] = np.where(k < W, k, -1)
        real = tok != PAD
        for cell in range(H * W):
            attr, col = divmod(cell, W)
            pos = self.grid0 + cell
            tags["attribute"][pos, real] = attr
            if self.items:  # column = value: the item is the position's, the house is the token's
                tags["item"][pos, real] = 6 * attr + col
                tags["house"][pos, HOUSE0:HOUSE0 + W] = np.arange(W)
            else:  # column = house: the house is the position's, the item is the token's
                tags["house"][pos, real] = col
                tags["item"][pos, VALUE0:VALUE0 + 6] = 6 * attr + np.arange(6)
        n_tags = {"item": 36, "attribute": H, "house": W, "clue": C}
        return {name: (n_tags[name], tuple(int(x) for x in t.ravel())) for name, t in tags.items()}

    # -- encoding -----------------------------------------------------------------------------------------------
    def encode(self, clues: np.ndarray, solutions: np.ndarray | None, sizes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Library arrays -> ``(inputs, given, targets or None)``: clues (N, k<=C, 4) codes (-1 pad), solutions
        (N, 6, 6) [a, h] = v, sizes (N, 2) = (houses, attributes)."""
        c = np.asarray(clues, dtype=np.int64)
        N = len(c)
        if c.shape[1] > self.C:
            assert (c[:, self.C:, 0] < 0).all()
            c = c[:, : self.C]
        cl = np.full((N, self.C, FIELDS), -1, np.int64)
        cl[:, : c.shape[1]] = c
        tok = np.full((N, self.C, FIELDS), PAD, np.int64)
        t = cl[:, :, 0]
        tok[:, :, 0] = np.where(t >= 0, TYPE0 + t, PAD)
        ops = cl[:, :, 1:]
        tok[:, :, 1:] = np.where(ops < 0, PAD, np.where(ops < lib.HOUSE_OP, ITEM0 + ops, HOUSE0 + ops - lib.HOUSE_OP))
        sizes = np.asarray(sizes, dtype=np.int64)
        real = self._real_cells(sizes)  # (N, H, W)
        HW = self.H * self.W
        given = np.concatenate([np.ones((N, self.grid0), bool), ~real.reshape(N, HW)], axis=1)
        cells = np.where(real, MASK, PAD).reshape(N, HW)
        inputs = np.concatenate([tok.reshape(N, self.grid0), cells], axis=1)
        targets = None
        if solutions is not None:
            s = self._answer_grid(np.asarray(solutions, dtype=np.int64))[:, : self.H, : self.W]
            cells = np.where(real, self.answer0 + s, PAD).reshape(N, HW)
            targets = np.concatenate([tok.reshape(N, self.grid0), cells], axis=1)
        return inputs, given, targets

    def _answer_grid(self, solutions: np.ndarray) -> np.ndarray:
        """Library solutions (N, 6, 6) [a, h] = v (-1 outside the puzzle) -> what the answer cells hold: the same
        (``"cells"``), or [a, v] = h (``"items"``)."""
        return _invert_rows(solutions) if self.items else solutions

    def _real_cells(self, sizes: np.ndarray) -> np.ndarray:
        a = np.arange(self.H)[None, :, None]
        h = np.arange(self.W)[None, None, :]
        return (a < sizes[:, 1, None, None]) & (h < sizes[:, 0, None, None])

    def decode_clues(self, tokens: np.ndarray) -> np.ndarray:
        """(N, L) tokens -> (N, C, 4) clue codes (-1 for PAD or anything unreadable)."""
        tok = np.asarray(tokens, dtype=np.int64)[:, : self.grid0].reshape(len(tokens), self.C, FIELDS)
        out = np.full(tok.shape, -1, np.int64)
        t = tok[:, :, 0]
        out[:, :, 0] = np.where((t >= TYPE0) & (t < TYPE0 + 7), t - TYPE0, -1)
        ops = tok[:, :, 1:]
        item = (ops >= ITEM0) & (ops < ITEM0 + 36)
        house = (ops >= HOUSE0) & (ops < HOUSE0 + 6)
        out[:, :, 1:] = np.where(item, ops - ITEM0, np.where(house, ops - HOUSE0 + lib.HOUSE_OP, -1))
        out[out[:, :, 0] < 0] = -1
        return out

    def decode_grid(self, tokens: np.ndarray) -> np.ndarray:
        """(N, L) tokens -> (N, 6, 6) grid [a, h] = value (-1 for mask, PAD or a non-answer token; with ``answer =
        "items"``, also for a house two values of one attribute were put in)."""
        tok = np.asarray(tokens, dtype=np.int64)[:, self.grid0:].reshape(len(tokens), self.H, self.W)
        g = np.full((len(tokens), lib.MAXM, lib.MAXN), -1, np.int64)
        g[:, : self.H, : self.W] = np.where((tok >= self.answer0) & (tok < self.answer0 + 6), tok - self.answer0, -1)
        return self._answer_grid(g)

    def sizes_from_given(self, given: np.ndarray) -> np.ndarray:
        """(N, 2) (houses, attributes) from which answer cells are not given."""
        real = ~np.asarray(given)[:, self.grid0:].reshape(len(given), self.H, self.W)
        return np.stack([real.any(axis=1).sum(axis=1), real.any(axis=2).sum(axis=1)], axis=1).astype(np.int64)

    def _order_positions(self, order: np.ndarray, solutions: np.ndarray | None) -> np.ndarray:
        """Library cell codes 6a+h (-1 pad) -> sequence positions, (N, H*W) int64. With ``answer = "items"`` the
        position of cell (a, h) is that of the item (a, solutions[a, h]); without solutions there is no order (-1)."""
        o = np.asarray(order, dtype=np.int64)[:, : self.H * self.W]
        a, col = o // 6, o % 6
        if self.items:
            if solutions is None:
                return np.full_like(o, -1)
            col = np.take_along_axis(np.asarray(solutions, dtype=np.int64).reshape(len(o), -1), np.maximum(o, 0), 1)
        return np.where(o < 0, -1, self.grid0 + a * self.W + col)

    def from_arrays(self, clues, solutions, sizes, order=None, witness=None, **meta: np.ndarray) -> Dataset:
        """Library arrays (see :meth:`encode`) -> a Dataset; ``order`` = the deductive solver's cell order (computed
        when None); ``witness`` = any solution of each puzzle, which places that order in the ``"items"`` layout when
        ``solutions`` is None (the cells deduction fixes are the same in every solution)."""
        inputs, given, targets = self.encode(clues, solutions, sizes)
        sizes = np.asarray(sizes, dtype=np.int64)
        if order is None:
            order = lib.solve_batch(self.decode_clues(inputs), sizes)
        placed = self._order_positions(order, solutions if solutions is not None else witness)
        m = {"order": placed, "houses": sizes[:, 0].copy(), "attributes": sizes[:, 1].copy(),
             "clues": (np.asarray(clues)[:, :, 0] >= 0).sum(axis=1).astype(np.int64), **meta}
        return Dataset(inputs, given, targets, m)

    # -- data ---------------------------------------------------------------------------------------------------
    def _lib_options(self) -> dict:
        o = self.options
        return {"min_houses": o.min_houses, "max_houses": o.max_houses, "min_attributes": o.min_attributes,
                "max_attributes": o.max_attributes, "max_clues": o.max_clues, "prune": o.prune}

    def _cache_path(self, split: str, n: int, seed: int) -> Path | None:
        if not self.options.cache_dir:
            return None
        key = json.dumps([split, n, seed, self._lib_options(), lib.CACHE_VERSION], sort_keys=True)
        h = hashlib.sha1(key.encode()).hexdigest()[:12]
        return Path(self.options.cache_dir) / f"zebra-{split}-{n}-{seed}-{h}.npz"

    def generate(self, split: str, n: int, seed: int, *, progress: bool = False) -> Dataset:
        """``n`` puzzles; train/test are finished by the deductive solver, hard are unique but need a guess."""
        from tqdm.auto import tqdm

        self.check_split(split, n)
        path = self._cache_path(split, n, seed)
        arr = None
        if path is not None and path.is_file():
            try:
                arr = lib.load_cache(path)
            except InputError:
                path.unlink(missing_ok=True)
        if arr is None:
            if path is not None:  # before generating, so an unwritable cache costs no work
                check_writable(path.parent, "task.cache_dir (set it to \"\" to disable the cache)", directory=True)
            with tqdm(total=n, desc=f"zebra {split}", unit="puzzle", disable=not progress, leave=False) as bar:
                arr = lib.generate_split(n, seed, split, progress=bar.update, **self._lib_options())
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                lib.save_cache(path, **arr)
        info = arr["info"].astype(np.int64)
        return self.from_arrays(arr["clues"], arr["solutions"], info[:, :2], arr["order"])

    def augment(self, batch: Dataset, rng: np.random.Generator) -> Dataset:
        """Random validity-preserving symmetries per example: value relabelling within each attribute, attribute
        permutation, mirrored houses (left-of / immediate-left operands swap), clue order, and the operand order of
        symmetric clues. The solver order is recomputed for the new puzzle."""
        assert batch.targets is not None
        sizes = self.sizes_from_given(batch.given)
        clues = self.decode_clues(batch.inputs)
        sols = self.decode_grid(batch.targets)
        c2, s2 = lib.augment(clues, sols, sizes, rng)
        return self.from_arrays(c2, s2, sizes, **{k: v for k, v in batch.meta.items() if k not in
                                                 ("order", "houses", "attributes", "clues")})

    def _blocks_to_dataset(self, blocks, source: str) -> Dataset:
        clues, sols, sizes, unique, deductive = [], [], [], [], []
        known = True
        for c, n, m, grid, line0 in blocks:
            where = f"{source}: the puzzle at line {line0}" if source != "input" else "the puzzle"
            if len(c) > self.C:
                raise InputError(f"{where} has {len(c)} clues; this task's layout holds at most {self.C} "
                                 "(task.max_clues)")
            count, sol = lib.count_solutions(c, n, m, 2)
            if count == 0:
                raise InputError(f"{where} has no solution; the clues contradict each other")
            if grid is not None:
                ok = lib.check_batch(c[None], np.array([[n, m]]), grid[None])[0]
                if not ok:
                    bad = [i + 1 for i, cl in enumerate(c) if not lib.clue_holds(cl, grid, n)]
                    raise InputError(f"{where}: its answer rows break clue(s) {bad}; fix the answer or leave it out")
                sol = grid
            elif count > 1:
                known = False
            status, _ = lib.deductive_solve(c, n, m)
            cc = np.full((self.C, 4), -1, np.int64)
            cc[: len(c)] = c
            clues.append(cc)
            sols.append(sol)
            sizes.append((n, m))
            unique.append(count == 1)
            deductive.append(status == 1)
        sz = np.array(sizes, dtype=np.int64)
        ds = self.from_arrays(np.stack(clues), np.stack(sols) if known else None, sz, witness=np.stack(sols),
                              unique=np.array(unique), deductive=np.array(deductive))
        return ds

    def parse(self, text: str) -> Dataset:
        """One puzzle in the text format of :mod:`._zebra_lib` (``houses N attributes M``, one clue per line,
        optional answer rows). Targets are the given answer, else the unique solution, else None."""
        block = lib.parse_text(text, max_houses=self.W, max_attributes=self.H)
        return self._blocks_to_dataset([block], "input")

    def read_file(self, path: str) -> Dataset:
        """A text file of puzzles (each starts with its ``houses`` line)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"puzzle file '{path}' not found")
        text = read_text(p, "puzzle file")  # UTF-8, a BOM accepted; another encoding names its line
        blocks = lib.parse_blocks(text, max_houses=self.W, max_attributes=self.H, source=str(path))
        if not blocks:
            raise InputError(f"puzzle file '{path}' holds no puzzle; each starts with 'houses N attributes M'")
        return self._blocks_to_dataset(blocks, str(path))

    def format(self, tokens: np.ndarray) -> str:
        """One sequence (L,) as text: the clues and the answer grid ('.' = not filled); parse() reads it back."""
        tok = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        cells = tok[0, self.grid0:].reshape(self.H, self.W)
        used = cells != PAD
        n = int(used.any(axis=0).sum()) or self.W
        m = int(used.any(axis=1).sum()) or self.H
        return lib.format_text(self.decode_clues(tok)[0], n, m, self.decode_grid(tok)[0])

    def groups(self, data: Dataset) -> dict[str, np.ndarray]:
        """Clue count, and the puzzle's size as ``<houses>x<attributes>`` (e.g. ``"4x5"``), read from which answer
        cells are blank, so puzzles read from files are grouped too."""
        sizes = self.sizes_from_given(data.given)
        size = np.array([f"{h}x{a}" for h, a in sizes], dtype=object)
        return {**super().groups(data), "size": size}

    # -- scoring ------------------------------------------------------------------------------------------------
    def score(self, predictions: np.ndarray, data: Dataset) -> dict[str, np.ndarray]:
        """``solved``: every answer cell right (without targets: the grid satisfies every clue); ``cell_accuracy``:
        fraction of answer cells right; ``invalid``: the grid is not a permutation per attribute satisfying all
        clues."""
        pred = np.asarray(predictions, dtype=np.int64)
        sizes = self.sizes_from_given(data.given)
        consistent = lib.check_batch(self.decode_clues(data.inputs), sizes, self.decode_grid(pred))
        blank = ~data.given
        if data.targets is not None:
            right = pred == data.targets
            solved = right.all(axis=1)
        else:
            right = np.broadcast_to(consistent[:, None], pred.shape)
            solved = consistent
        cell_acc = (right & blank).sum(axis=1) / np.maximum(blank.sum(axis=1), 1)
        return {"solved": solved, "cell_accuracy": cell_acc, "invalid": ~consistent}


def _invert_rows(grid: np.ndarray) -> np.ndarray:
    """(N, 6, 6) rows mapping column -> 0..5 (-1 = unknown) -> the inverse maps: out[i, a, grid[i, a, c]] = c. A
    target two columns map to stays -1, so a row that is not a permutation never inverts into one."""
    out = np.full(grid.shape, -1, np.int64)
    i, a, c = np.nonzero((grid >= 0) & (grid < grid.shape[2]))
    g = grid[i, a, c]
    hits = np.zeros(grid.shape, np.int64)
    np.add.at(hits, (i, a, g), 1)
    out[i, a, g] = c
    out[hits > 1] = -1
    return out
