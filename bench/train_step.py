#!/usr/bin/env python
"""Samples/s of one MDM training step on this CPU under each speed option, and where the time goes.

Times forward + loss + backward + AdamW of the default Sudoku model (configs/sudoku-default.toml's backbone, or
--d-model/--layers) at batch 128 for: fp32; bf16 autocast with PyTorch's fused attention kernel; bf16 autocast with
attention as plain matmuls (the transformer's CPU bf16 path, the default); fused AdamW; torch.compile of the model.
Then a profile of the fastest and the fp32 step (top operators by self time). Ratios are measured in one run.

    python bench/train_step.py [--threads 1] [--batch 128] [--reps 10] [--d-model 128 --layers 4] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch

import unmask.plugins.backbones.transformer as tr
from unmask.core.models import autocast_context, build_model
from unmask.core.report import cpu_model
from unmask.core.task import build_task
from unmask.plugins.objectives.mdm import mdm_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task = build_task({"name": "sudoku", "minimal": False, "cache_dir": ""})
    model, _ = build_model(task, {"name": "transformer", "d_model": a.d_model, "n_layers": a.layers, "n_heads": 8})
    data = task.generate("train", a.batch, 0)
    x, given = torch.from_numpy(data.targets), torch.from_numpy(data.given)
    cpu = torch.device("cpu")

    def step(fwd, opt, bf16, gen):
        with autocast_context(cpu, bf16):
            loss, _ = mdm_loss(fwd, x, given, task.mask_id, 1e-3, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def measure(bf16: bool, math_attn: bool, fused: bool, compiled: bool) -> float:
        tr.CPU_BF16_MATH_ATTENTION = math_attn
        fwd = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            step(fwd, opt, bf16, gen)
        t0 = time.perf_counter()
        for _ in range(a.reps):
            step(fwd, opt, bf16, gen)
        return a.batch * a.reps / (time.perf_counter() - t0)

    options = [("fp32", False, True, False, False), ("fp32, fused AdamW", False, True, True, False),
               ("bf16 autocast, fused attention kernel", True, False, False, False),
               ("bf16 autocast, matmul attention (default)", True, True, False, False),
               ("bf16 autocast, matmul attention, fused AdamW", True, True, True, False)]
    if not a.no_compile:
        options += [("fp32, torch.compile", False, True, False, True),
                    ("bf16 autocast, matmul attention, torch.compile", True, True, False, True)]
    print(f"{cpu_model()}, {a.threads} thread(s); d_model {a.d_model}, {a.layers} layers, batch {a.batch}; "
          f"samples/s of a training step (forward, loss, backward, AdamW)")
    base = None
    for label, *opts in options:
        sps = measure(*opts)
        base = base or sps
        print(f"  {label:<50} {sps:7.1f}  ({sps / base:.2f}x fp32)", flush=True)
    tr.CPU_BF16_MATH_ATTENTION = True
    from torch.profiler import profile

    for label, bf16 in (("fp32", False), ("bf16 autocast, matmul attention", True)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        step(model, opt, bf16, gen)
        with profile() as prof:
            for _ in range(3):
                step(model, opt, bf16, gen)
        print(f"\nprofile, {label} (3 steps):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=45))


if __name__ == "__main__":
    main()
