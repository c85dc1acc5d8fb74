#!/usr/bin/env python
"""Teacher-forced accuracy of an autoregressive (ARM) model per kind of answer token (row, column, value) on its
validation puzzles: ``python tools/arm_token_accuracy.py models/sudoku-arm [--n 100] [--seed 7919]``.

Greedy decoding scores whole boards; this says which part of the (row, column, value) triples a model has learnt
when the true sequence is fed (the validation puzzles of a run with ``train.seed = s`` are ``seed = s + 7919``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="arm_token_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an ARM model, checkpoint or run directory")
    p.add_argument("--n", type=int, default=100, help="puzzles (default 100)")
    p.add_argument("--seed", type=int, default=7919, help="seed of the generated test split (default 7919)")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from unmask.core.errors import UnmaskError
    from unmask.core.models import load_model
    from unmask.plugins.objectives.arm import ArmLayout

    try:
        task, model, config = load_model(args.model)
        if config.get("train", {}).get("objective") != "arm":
            raise UnmaskError(f"'{args.model}' is not an ARM model (train.objective = 'arm'); give an ARM's directory")
        lay = ArmLayout.for_config(task, config)
        seq, loss_mask = lay.encode(task.generate("test", args.n, args.seed))
    except UnmaskError as exc:
        print(f"arm_token_accuracy: {exc}", file=sys.stderr)
        return 2
    with torch.inference_mode():
        pred = model(torch.from_numpy(seq[:, :-1])).argmax(-1).numpy()
    target, scored = seq[:, 1:], loss_mask[:, 1:]
    phase = (np.arange(1, seq.shape[1]) - 1) % 3
    for k, name in enumerate(("row", "column", "value")):
        m = scored & (phase[None, :] == k)
        print(f"{name:>6}: {100 * float((pred[m] == target[m]).mean()):.1f}% of {int(m.sum()):,} answer tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
