#!/usr/bin/env python
"""Train a model: ``python tools/train.py --config configs/sudoku-default.toml [--set k=v] [--resume]``."""

import sys

from unmask.core.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
