#!/usr/bin/env python
"""Solve one puzzle: ``python tools/solve.py --model models/sudoku-default PUZZLE``."""

import sys

from unmask.core.cli import main

if __name__ == "__main__":
    sys.exit(main(["solve", *sys.argv[1:]]))
