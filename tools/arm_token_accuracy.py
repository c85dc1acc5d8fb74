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
        seq, loss_mask = lay.encode(task.generate("test", args.n, seed))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
