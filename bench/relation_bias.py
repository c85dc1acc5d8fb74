#!/usr/bin/env python
"""Training-step cost of the transformer's relation bias (``backbone.relation_bias``) and of its two forms.

Times one forward + backward pass of the L&O-NAE-SAT cpu-scale model (d=128, 4 layers, 8 heads, L = 300) at
(N, P) = (25, 275) (factor rank K = 50) and (100, 200) (K = 200) for: no bias; the bias as exact low-rank extra
query/key dimensions; the bias as a dense (H, L, L) attention mask with a gradient. The backbone picks the factored
form up to ``MAX_FACTOR_RANK`` dimensions and the dense one beyond; this prints what that threshold rests on:
seconds per step and ratios to the plain model, measured in one run, plus the largest logit difference between the
two forms on the same weights.

    python bench/relation_bias.py [--batch 64] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import unmask.plugins.backbones.transformer as tr
from unmask.core.models import build_model
from unmask.core.task import build_task

BACKBONE = {"name": "transformer", "d_model": 128, "n_layers": 4, "n_heads": 8}


def _build(task, bias: bool, max_rank: int) -> torch.nn.Module:
    old, tr.MAX_FACTOR_RANK = tr.MAX_FACTOR_RANK, max_rank
    try:
        return build_model(task, {**BACKBONE, "relation_bias": bias, "relation_bias_init": 4.0})[0]
    finally:
        tr.MAX_FACTOR_RANK = old


def _time(model: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    model(x).sum().backward()
    t0 = time.perf_counter()
    for _ in range(reps):
        model(x).sum().backward()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"batch {a.batch}, {a.threads} thread(s), forward + backward; backbone threshold MAX_FACTOR_RANK = "
          f"{tr.MAX_FACTOR_RANK}")
    for n, p in ((25, 275), (100, 200)):
        task = build_task({"name": "lo_nae_sat", "n_latent": n, "n_obs": p})
        x = torch.randint(0, 3, (a.batch, task.seq_len), generator=torch.Generator().manual_seed(0))
        models = {"plain": _build(task, False, 0), "factored": _build(task, True, 10**9),
                  "dense": _build(task, True, 0)}
        models["dense"].load_state_dict(models["factored"].state_dict())
        with torch.no_grad():
            diff = (models["factored"](x[:4]) - models["dense"](x[:4])).abs().max().item()
        k = models["factored"].rel_f.shape[1]
        t = {name: _time(m, x, a.reps) for name, m in models.items()}
        print(f"L&O-NAE-SAT ({n}, {p}), L = {task.seq_len}, factor rank K = {k}:")
        for name, sec in t.items():
            print(f"  {name:9s} {sec:7.3f} s/step   {sec / t['plain']:5.2f}x plain")
        print(f"  dense / factored {t['dense'] / t['factored']:.2f}x; max |logit difference| {diff:.1e}")


if __name__ == "__main__":
    main()
