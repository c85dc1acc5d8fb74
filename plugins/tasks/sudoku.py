"""Sudoku 9x9: 81 cells, digits 1-9 as token ids 0-8, mask id 9 (Kim et al. 2025, Sec. 5; Shah et al. 2024 data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np

from unmask.core.config import Section
from unmask.core.errors import InputError
from unmask.core.files import check_writable
from unmask.core.registry import tasks
from unmask.core.task import Dataset, Task
from unmask.plugins.tasks import _sudoku_lib as lib

MASK = 9
CELLS = 81


class SudokuOptions(Section):
    min_clues: Annotated[int, msgspec.Meta(ge=17, le=81)] = 17
    """Generated puzzles keep at least this many clues."""
    max_clues: Annotated[int, msgspec.Meta(ge=17, le=81)] = 81
    minimal: bool = True
    """Remove clues while the solution stays unique (minimal puzzles, ~24 clues); else stop at a clue count drawn
    uniformly in [min_clues, max_clues]."""
    cache_dir: str = "data/cache"
    """Where generated sets are cached (compressed numpy, no pickle); empty = no cache."""


def digits_to_tokens(grids: np.ndarray) -> np.ndarray:
    """(N, 81) digits with 0 = blank -> token ids (digit - 1, blank -> mask)."""
    g = grids.astype(np.int64)
    return np.where(g == 0, MASK, g - 1)


def tokens_to_digits(tokens: np.ndarray) -> np.ndarray:
    t = np.asarray(tokens).astype(np.int64)
    return np.where(t == MASK, 0, t + 1).astype(np.int8)


@tasks.register("sudoku")
class Sudoku(Task):
    """9x9 Sudoku: fill the blanks; solved = every cell right (or a valid grid keeping the givens)."""

    Options = SudokuOptions
    options: SudokuOptions
    name = "sudoku"

    def __init__(self, options: SudokuOptions | None = None) -> None:
        super().__init__(options)
        if self.options.min_clues > self.options.max_clues:
            from unmask.core.errors import ConfigError

            raise ConfigError(
                f"task.min_clues ({self.options.min_clues}) must be <= task.max_clues ({self.options.max_clues})"
            )

    vocab_size = 10
    seq_len = CELLS
    mask_id = MASK

    def structure(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        cells = np.arange(CELLS)
        row, col = cells // 9, cells % 9
        box = (row // 3) * 3 + col // 3
        return {"row": (9, tuple(row.tolist())), "col": (9, tuple(col.tolist())), "box": (9, tuple(box.tolist()))}

    def relations(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``row``, ``col``, ``box``: each cell to the cells of its row, column, box (itself included)."""
        out = {}
        for name, (_, ids) in self.structure().items():
            a = np.asarray(ids)
            q, k = np.nonzero(a[:, None] == a[None, :])
            out[name] = (tuple(q.tolist()), tuple(k.tolist()))
        return out

    # -- data ---------------------------------------------------------------------------------------------------
    def from_digits(self, puzzles: np.ndarray, solutions: np.ndarray | None, **meta: np.ndarray) -> Dataset:
        inputs = digits_to_tokens(puzzles)
        given = puzzles != 0
        targets = None if solutions is None else digits_to_tokens(solutions)
        meta = {"clues": given.sum(axis=1).astype(np.int64), **meta}
        return Dataset(inputs, given, targets, meta)

    def _cache_path(self, split: str, n: int, seed: int) -> Path | None:
        if not self.options.cache_dir:
            return None
        o = self.options
        key = json.dumps([split, n, seed, o.min_clues, o.max_clues, o.minimal, lib.CACHE_VERSION
                          if hasattr(lib, "CACHE_VERSION") else 1])
        h = hashlib.sha1(key.encode()).hexdigest()[:12]
        return Path(o.cache_dir) / f"sudoku-{split}-{n}-{seed}-{h}.npz"

    def generate(self, split: str, n: int, seed: int, *, progress: bool = False) -> Dataset:
        """``n`` puzzles with unique solutions; train/test are solved by the 7-technique solver, hard are not."""
        self.check_split(split, n)
        if n == 0:
            empty = np.zeros((0, CELLS), dtype=np.int8)
            return self.from_digits(empty, empty, order=np.zeros((0, CELLS), dtype=np.int64))
        path = self._cache_path(split, n, seed)
        if path is not None and path.is_file():
            try:
                arr = lib.load_cache(path)
                return self.from_digits(arr["puzzles"], arr["solutions"], order=arr["order"].astype(np.int64))
            except Exception:  # noqa: BLE001 - a corrupt cache is regenerated
                path.unlink(missing_ok=True)
        if path is not None:  # before generating, so an unwritable cache costs no work
            check_writable(path.parent, "task.cache_dir (set it to \"\" to disable the cache)", directory=True)
        o = self.options
        puzzles, solutions, order = _generate_with_progress(n, seed, split, o, progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lib.save_cache(path, puzzles=puzzles, solutions=solutions, order=order)
        return self.from_digits(puzzles, solutions, order=order.astype(np.int64))

    def augment(self, batch: Dataset, rng: np.random.Generator) -> Dataset:
        """Random validity-preserving symmetries: digit relabelling, row/column/band/stack permutations, transpose."""
        assert batch.targets is not None
        p, s = lib.augment(tokens_to_digits(np.where(batch.given, batch.inputs, MASK)),
                           tokens_to_digits(batch.targets), rng)
        return self.from_digits(p, s)

    def read_file(self, path: str) -> Dataset:
        puzzles, solutions = lib.read_puzzle_file(path)
        return self.from_digits(puzzles, solutions)

    def parse(self, text: str) -> Dataset:
        puzzle = lib.parse_puzzle(text)
        solution, unique = lib.check_solvable(puzzle)
        if solution is None:
            raise InputError("the puzzle has no solution; check the givens")
        sol = solution[None] if unique else None
        return self.from_digits(puzzle[None], sol, unique=np.array([unique]))

    def format(self, tokens: np.ndarray) -> str:
        return lib.format_grid(tokens_to_digits(tokens))

    def format_cells(self, tokens: np.ndarray) -> list[str] | None:
        d = tokens_to_digits(np.asarray(tokens).reshape(1, -1))[0]
        return ["." if v == 0 else str(int(v)) for v in d]

    def explain(self, tokens: np.ndarray, data: Dataset) -> list[str]:
        """Each row, column and box where a digit repeats, then the grid with givens in [brackets] and the
        clashing cells between !marks!."""
        g = tokens_to_digits(np.asarray(tokens).reshape(1, -1))[0].reshape(9, 9)
        given = np.asarray(data.given).reshape(-1)[:81].reshape(9, 9)
        units = [("row", r + 1, [(r, c) for c in range(9)]) for r in range(9)]
        units += [("column", c + 1, [(r, c) for r in range(9)]) for c in range(9)]
        units += [("box", 3 * br + bc + 1, [(3 * br + i, 3 * bc + j) for i in range(3) for j in range(3)])
                  for br in range(3) for bc in range(3)]
        lines, bad = [], set()
        for kind, k, cells in units:
            for d in range(1, 10):
                at = [(r, c) for r, c in cells if g[r, c] == d]
                if len(at) > 1:
                    bad.update(at)
                    where = ", ".join(f"r{r + 1}c{c + 1}{' (given)' if given[r, c] else ''}" for r, c in at)
                    times = "twice" if len(at) == 2 else f"{len(at)} times"
                    lines.append(f"{kind} {k} has a {d} {times}: {where}")
        if not lines:
            return []
        lines.append("grid ([given], !clash!):")
        for r in range(9):
            if r in (3, 6):
                lines.append("-" * 10 + "+" + "-" * 11 + "+" + "-" * 10)
            shown = []
            for c in range(9):
                v = "." if g[r, c] == 0 else str(int(g[r, c]))
                shown.append(f"!{v}!" if (r, c) in bad else f"[{v}]" if given[r, c] else f" {v} ")
            lines.append(" | ".join("".join(shown[3 * s: 3 * s + 3]) for s in range(3)))
        return lines

    def groups(self, data: Dataset) -> dict[str, np.ndarray]:
        """Clue count, and what the 7-technique solver needs (singles / eliminations / beyond: see
        ``technique_classes``) for each puzzle."""
        digits = tokens_to_digits(np.where(data.given, data.inputs, MASK))
        return {"clues": data.meta["clues"], "technique": lib.technique_classes(digits)}

    def board_shape(self) -> tuple[int, int]:
        return (9, 9)

    # -- scoring ------------------------------------------------------------------------------------------------
    def score(self, predictions: np.ndarray, data: Dataset) -> dict[str, np.ndarray]:
        pred = np.asarray(predictions)
        digits = tokens_to_digits(pred)
        valid = lib.valid_grids(digits) & (pred != MASK).all(axis=1)
        keeps = ((pred == data.inputs) | ~data.given).all(axis=1)
        blank = ~data.given
        if data.targets is not None:
            right = pred == data.targets
            solved = right.all(axis=1)
        else:
            right = np.broadcast_to(valid[:, None], pred.shape)
            solved = valid & keeps
        n_blank = np.maximum(blank.sum(axis=1), 1)
        cell_acc = (right & blank).sum(axis=1) / n_blank
        return {"solved": solved, "cell_accuracy": cell_acc, "invalid": ~valid}


def _generate_with_progress(n: int, seed: int, split: str, o: SudokuOptions, progress: bool):
    """Generate in chunks (one seed per chunk) so long runs show progress; deterministic from ``seed``."""
    from tqdm.auto import tqdm

    chunk = 2000
    parts = []
    with tqdm(total=n, desc=f"sudoku {split}", unit="puzzle", disable=not progress, leave=False) as bar:
        done, i = 0, 0
        while done < n:
            m = min(chunk, n - done)
            p, s, order = lib.generate_split(
                m, seed * 100_003 + i, split, min_clues=o.min_clues, max_clues=o.max_clues, minimal=o.minimal
            )
            parts.append((p, s, order))
            done += m
            i += 1
            bar.update(m)
    return tuple(np.concatenate([x[j] for x in parts]) for j in range(3))
