#!/usr/bin/env python
"""Export a trained model: ``python tools/export.py --model models/sudoku-default --onnx m.onnx`` (or ``--trt m.plan``).

Same options as ``unmask export`` (see ``--help``); the work is done by :mod:`unmask.export.cli`.
"""

import sys

from unmask.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
