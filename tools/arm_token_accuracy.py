#!/usr/bin/env python
"""Teacher-forced accuracy of an autoregressive (ARM) model per kind of answer token (row, column, value) on its
validation puzzles: ``python tools/arm_token_accuracy.py models/sudoku-arm [--n 100] [--seed S]``.

Greedy decoding scores whole boards; this says which part of the (row, column, value) triples a model has learnt
when the true sequence is fed. The puzzles are the generated test split the model's run validated on (its
``train.seed`` + ``VAL_SEED_OFFSET``) unless ``--seed`` names another.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="arm_token_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an ARM model, checkpoint or run directory")
    p.add_argument("--n", type=int, default=100, help="puzzles (default 100)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the generated test split (default: the one the model's run validated on)")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from unmask.core.errors import UnmaskError
    from unmask.core.models import load_model
    from unmask.core.training.trainer import VAL_SEED_OFFSET
    from unmask.plugins.objectives.arm import COL, ROW, VAL, ArmLayout

    try:
        task, model, config = load_model(args.model)
        if config.get("train", {}).get("objective") != "arm":
            raise UnmaskError(f"'{args.model}' is not an ARM model (train.objective = 'arm'); give an ARM's directory")
        lay = ArmLayout.for_config(task, config)
        seed = int(config["train"].get("seed", 0)) + VAL_SEED_OFFSET if args.seed is None else args.seed
        data = task.generate("test", args.n, seed)
        seq, loss_mask = lay.encode(data)
    except UnmaskError as exc:
        print(f"arm_token_accuracy: {exc}", file=sys.stderr)
        return 2
    with torch.inference_mode():
        pred = model(torch.from_numpy(seq[:, :-1])).argmax(-1).numpy()
    target, scored = seq[:, 1:], loss_mask[:, 1:]
    slot = np.asarray(lay.spec_task().slots[1:])  # the kind of each predicted token
    for k, name in ((ROW, "row"), (COL, "column"), (VAL, "value")):
        m = scored & (slot[None, :] == k)
        print(f"{name:>6}: {100 * float((pred[m] == target[m]).mean()):.1f}% of {int(m.sum()):,} answer tokens")
    chance = row_elimination(ArmLayout.for_task(task, lay.order), data)  # the task's grid, whatever the model's
    if chance is not None:
        print(f"        (a guess among the values left in the cell's grid row: {100 * chance:.1f}%)")
    return 0


def row_elimination(lay: Any, data: Any) -> float | None:
    """Expected value accuracy of a guesser that knows only that each row of the answer grid (an
    :class:`~unmask.plugins.objectives.arm.ArmLayout`'s) holds distinct values (a Zebra attribute, a Sudoku row): the
    mean of 1 / (cells of its row still open) over the answer cells in the layout's fill order. None when a row's
    answer cells repeat a value or the grid has cells that do not exist."""
    import numpy as np

    if lay.n_cells != lay.R * lay.C:
        return None
    full = np.where(data.given, data.inputs, data.targets)[:, lay.cell_pos]
    given = np.asarray(data.given, bool)[:, lay.cell_pos]
    rows = full.reshape(len(full), lay.R, lay.C)
    open_ = ~given.reshape(rows.shape)
    for b in range(len(rows)):  # the answer cells of a row must hold distinct values
        for r in range(lay.R):
            v = rows[b, r][open_[b, r]]
            if len(set(v.tolist())) != len(v):
                return None
    guesses = []
    for b, order in enumerate(lay.fill_order(data)):
        left = open_[b].sum(axis=1)  # (R,) open cells per row
        for cell in order[~given[b][order]]:
            guesses.append(1.0 / left[cell // lay.C])
            left[cell // lay.C] -= 1
    return float(np.mean(guesses)) if guesses else None


if __name__ == "__main__":
    sys.exit(main())
