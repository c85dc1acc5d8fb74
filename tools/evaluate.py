#!/usr/bin/env python
"""Evaluate strategies: ``python tools/evaluate.py --model models/sudoku-default --generate 1000``."""

import sys

from unmask.core.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
