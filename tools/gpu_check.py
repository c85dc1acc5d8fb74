#!/usr/bin/env python
"""GPU check: every GPU engine on one model - parity with torch on the CPU, forward passes/s, puzzles/s per strategy.

    python tools/gpu_check.py --model models/sudoku-default --out results/gpu_check.json

Engines (each only where its software is installed; a missing one is listed in the report with the reason, never
silently dropped): torch CUDA fp32 and bf16 autocast; onnxruntime with the CUDA provider (fp32, fp16 exports) and
with its TensorRT provider (fp32); TensorRT plans (fp32, fp16; add bf16 with --trt-precisions). For each engine:
logit parity against torch fp32 on the CPU (:mod:`unmask.export.parity`, same tolerances as export), forward passes
per second at several batch sizes, and for each strategy the solved rate, NFE, puzzles/s and (for deterministic
strategies) whether the decoded puzzles equal those of torch CUDA fp32. Without a GPU it stops at once with one line.
The checks are :func:`unmask.export.gpu_check.gpu_check`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/sudoku-default", help="checkpoint (model or run directory)")
    p.add_argument("--out", default="results/gpu_check.json")
    p.add_argument("--puzzles", type=int, default=1000, help="test puzzles decoded per engine and strategy")
    p.add_argument("--batch", type=int, default=256, help="decode batch size")
    p.add_argument("--strategies", default="all", help="comma-separated strategy names, or all registered ones")
    p.add_argument("--forward-batches", default="1,32,256,1024")
    p.add_argument("--trt-precisions", default="fp32,fp16", help="TensorRT plans to build (fp32,fp16,bf16)")
    p.add_argument("--max-batch", type=int, default=1024, help="TensorRT profile max batch")
    p.add_argument("--quick", action="store_true", help="200 puzzles, margin and top_prob only, short timings")
    args = p.parse_args(argv)
    from unmask.export.gpu_check import gpu_check

    return gpu_check(args.model, args.out, puzzles=args.puzzles, batch=args.batch, strategies=args.strategies,
                     forward_batches=args.forward_batches, trt_precisions=args.trt_precisions,
                     max_batch=args.max_batch, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
