#!/usr/bin/env python
"""Samples/s of one MDM training step on this CPU under each speed option, and where the time goes.

Times forward + loss + backward + AdamW of a model at its training batch size: by default the default Sudoku model
(configs/sudoku-default.toml's backbone, or --d-model/--layers, batch 128); with --config, the task, backbone and
batch size of any MDM training config (e.g. configs/code-infill.toml: the code model, 512-token windows of its
corpus). Options: fp32; bf16 autocast with PyTorch's fused attention kernel and with attention as plain matmuls (the
transformer backbone's CPU bf16 path and its default; transformers' "eager" attention for the ``hf`` backbone, whose
default is "sdpa"); fused AdamW; torch.compile of the model; for a backbone that takes an ``index`` (the ``hf``
one), the output layer at every position against the masked positions only (what training does). Then a profile
of the fp32 step and the bf16 one (top operators by self time). Ratios are measured in one run.

    python bench/train_step.py [--threads 1] [--batch 128] [--reps 10] [--d-model 128 --layers 4] [--no-compile]
    python bench/train_step.py --config configs/code-infill.toml [--batch 16] [--reps 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

import unmask.plugins.backbones.transformer as tr
from unmask.core.config import load_toml
from unmask.core.models import autocast_context, build_model
from unmask.core.report import cpu_model
from unmask.core.task import build_task
from unmask.plugins.objectives.mdm import mdm_loss


def _setup(a: argparse.Namespace) -> tuple[Any, torch.nn.Module, int, str]:
    """(task, model, batch size, description) from --config or the default Sudoku model's shape."""
    if a.config:
        raw = load_toml(a.config)
        train = raw.get("train", {})
        if train.get("objective", "mdm") != "mdm":
            raise SystemExit(f"error: {a.config} trains objective '{train['objective']}'; this bench times MDM steps")
        task = build_task(raw["task"])
        model, backbone = build_model(task, raw["backbone"])
        batch = a.batch or int(train.get("batch_size", 128))
        return task, model, batch, f"{a.config} (backbone '{backbone['name']}')"
    task = build_task({"name": "sudoku", "minimal": False, "cache_dir": ""})
    model, _ = build_model(task, {"name": "transformer", "d_model": a.d_model, "n_layers": a.layers, "n_heads": 8})
    return task, model, a.batch or 128, f"d_model {a.d_model}, {a.layers} layers"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="an MDM training config: time its task, backbone and batch size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the config's, or 128)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task, model, batch, what = _setup(a)
    data = task.generate("train", batch, 0)
    x, given = torch.from_numpy(data.targets), torch.from_numpy(data.given)
    cpu = torch.device("cpu")
    transformer = isinstance(model, tr.Transformer)
    hf_model = getattr(model, "model", None) if not transformer else None
    hf_attention = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
    # what training uses: the transformer's matmul attention; the hf model's own implementation (sdpa by default)
    default_math = transformer or hf_attention == "eager"
    sparse = "index" in getattr(model, "inputs", ())  # the loss applies the output layer at masked positions only

    def dense(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda tokens: m(tokens)  # hides ``index``: the loss applies the output layer at every position

    def step(fwd: Any, opt: torch.optim.Optimizer, bf16: bool, gen: torch.Generator) -> None:
        with autocast_context(cpu, bf16):
            loss, _ = mdm_loss(fwd, x, given, task.mask_id, 1e-3, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def set_math_attention(on: bool) -> None:
        tr.CPU_BF16_MATH_ATTENTION = on
        if hasattr(hf_model, "set_attn_implementation"):
            hf_model.set_attn_implementation("eager" if on else hf_attention if hf_attention != "eager" else "sdpa")

    def measure(bf16: bool, math_attn: bool, fused: bool, compiled: bool, all_positions: bool) -> float:
        set_math_attention(math_attn)
        fwd: Any = torch.compile(model) if compiled else model
        if all_positions:
            fwd = dense(fwd)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            step(fwd, opt, bf16, gen)
        t0 = time.perf_counter()
        for _ in range(a.reps):
            step(fwd, opt, bf16, gen)
        return batch * a.reps / (time.perf_counter() - t0)

    d = default_math
    bf16_label = "bf16 autocast, matmul attention" if d else "bf16 autocast, fused attention kernel"
    options = [("fp32", False, d, False, False, False), ("fp32, fused AdamW", False, d, True, False, False),
               ("bf16 autocast, fused attention kernel", True, False, False, False, False),
               ("bf16 autocast, matmul attention", True, True, False, False, False)]
    options = [(label + (" (default)" if label == bf16_label else ""), *o) for label, *o in options]
    options.append((f"{bf16_label}, fused AdamW", True, d, True, False, False))
    if sparse:
        options.append((f"{bf16_label}, output layer at every position", True, d, False, False, True))
    if not a.no_compile:
        options += [("fp32, torch.compile", False, d, False, True, False),
                    (f"{bf16_label}, torch.compile", True, d, False, True, False)]
    sparse_note = "; output layer at the masked positions only unless said" if sparse else ""
    print(f"{cpu_model()}, {a.threads} thread(s); {what}, batch {batch} x {x.shape[1]} tokens; samples/s of a "
          f"training step (forward, loss, backward, AdamW){sparse_note}")
    base = None
    for label, *opts in options:
        sps = measure(*opts)
        base = base or sps
        print(f"  {label:<66} {sps:8.2f}  ({sps / base:.2f}x fp32)", flush=True)
    set_math_attention(d)
    from torch.profiler import profile

    for label, bf16 in (("fp32", False), (bf16_label, True)):
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
