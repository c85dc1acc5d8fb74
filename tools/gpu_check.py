#!/usr/bin/env python
"""GPU check: every GPU engine on one model - parity with torch on the CPU, forward passes/s, puzzles/s per strategy.

    python tools/gpu_check.py --model models/sudoku-default --out results/gpu_check.json

Engines (each only where its software is installed; a missing one is listed in the report with the reason, never
silently dropped): torch CUDA fp32 and bf16 autocast; onnxruntime with the CUDA provider (fp32, fp16 exports) and
with its TensorRT provider (fp32); TensorRT plans (fp32, fp16; add bf16 with --trt-precisions). For each engine:
logit parity against torch fp32 on the CPU (:mod:`unmask.export.parity`, same tolerances as export), forward passes
per second at several batch sizes, and for each strategy the solved rate, NFE, puzzles/s and (for deterministic
strategies) whether the decoded puzzles equal those of torch CUDA fp32. Without a GPU it stops at once with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch


def _no_gpu_message() -> str:
    return (
        f"tools/gpu_check.py needs a CUDA GPU, but torch {torch.__version__} "
        f"(CUDA build: {torch.version.cuda or 'no'}) sees none; run it on a machine with an NVIDIA GPU and a CUDA "
        "build of torch (add onnxruntime-gpu with `pip install .[gpu]` and TensorRT with `pip install .[trt]` to "
        "check those engines too)"
    )


def _forward_rates(engine: Any, tokens: torch.Tensor, batches: list[int], budget: float) -> dict[str, Any]:
    out = {}
    for b in batches:
        reps = -(-b // tokens.shape[0])
        x = tokens.repeat(reps, 1)[:b].to(engine.device)
        with torch.inference_mode():
            engine(x)
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while n < 5 or time.perf_counter() - t0 < budget:
                engine(x)
                n += 1
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / n
        out[str(b)] = {"calls_per_s": 1.0 / dt, "rows_per_s": b / dt, "ms_per_call": 1000.0 * dt}
    return out


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

    if not torch.cuda.is_available():
        print(f"error: {_no_gpu_message()}", file=sys.stderr)
        return 2

    from unmask.core.errors import UnmaskError
    from unmask.core.evaluate import evaluate
    from unmask.core.models import load_model
    from unmask.core.registry import strategies as strategy_registry
    from unmask.core.runtime import open_engine
    from unmask.core.strategy import build_strategy
    from unmask.export.parity import check_parity, parity_inputs, run_batched

    if args.quick:
        args.puzzles = min(args.puzzles, 200)
        if args.strategies == "all":
            args.strategies = "margin,top_prob"
    t_start = time.perf_counter()
    try:
        task, module, config = load_model(args.model)
    except UnmaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    names = strategy_registry.names() if args.strategies == "all" else [s.strip() for s in args.strategies.split(",")]
    tokens = parity_inputs(task)
    with torch.inference_mode():
        reference = run_batched(open_engine(args.model, "torch"), tokens)  # torch fp32 on the CPU
    data = task.generate("test", args.puzzles, 0)
    fwd_batches = [int(b) for b in args.forward_batches.split(",")]
    budget = 0.5 if args.quick else 2.0

    import onnxruntime as ort

    report: dict[str, Any] = {
        "model": args.model,
        "machine": {
            "gpu": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "torch": str(torch.__version__), "cuda": torch.version.cuda, "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers(), "python": platform.python_version(),
            "tensorrt": _tensorrt_version(),
        },
        "puzzles": args.puzzles, "batch": args.batch, "strategies": names,
        "engines": {}, "skipped": {},
    }
    with tempfile.TemporaryDirectory(prefix="unmask-gpu-check-") as work_s:
        work = Path(work_s)
        for name, label, make in _engine_factories(args, work, ort.get_available_providers(), report["skipped"]):
            print(f"== {name}")
            entry: dict[str, Any] = {"label": label}
            report["engines"][name] = entry
            try:
                t0 = time.perf_counter()
                engine = make()
                entry["open_seconds"] = round(time.perf_counter() - t0, 1)
                entry["parity"] = check_parity(reference, engine, tokens, mask_id=task.mask_id, label=label,
                                               what=name, enforce=False)
                entry["forward"] = _forward_rates(engine, tokens, fwd_batches, budget)
                print("   forward passes/s: " + ", ".join(f"b={b}: {v['calls_per_s']:.0f}"
                                                        for b, v in entry["forward"].items()))
                entry["decode"] = {}
                for sname in names:
                    entry["decode"][sname] = _decode(engine, task, data, sname, args.batch, report, name,
                                                     evaluate, build_strategy)
            except Exception as exc:  # noqa: BLE001 - one failing engine must not hide the others' results
                entry["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                if not isinstance(exc, UnmaskError):
                    entry["traceback"] = traceback.format_exc(limit=6)
                print(f"   FAILED: {entry['error']}")
            finally:
                engine = None
                torch.cuda.empty_cache()
    report.pop("_predictions", None)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} ({report['seconds']}s)")
    failed = [n for n, e in report["engines"].items() if "error" in e or not e.get("parity", {}).get("passed", False)]
    if failed:
        print(f"engines failing parity or erroring: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _tensorrt_version() -> str | None:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def _engine_factories(args: argparse.Namespace, work: Path, providers: list[str],
                      skipped: dict[str, str]) -> list[tuple[str, str, Callable[[], Any]]]:
    from unmask.core.runtime import open_engine
    from unmask.export.onnx import export_onnx
    from unmask.export.tensorrt import build_tensorrt

    model = args.model
    out: list[tuple[str, str, Callable[[], Any]]] = [
        ("torch_cuda_fp32", "fp32", lambda: open_engine(model, "torch", device="cuda")),
        ("torch_cuda_bf16", "bf16", lambda: open_engine(model, "torch", device="cuda", bf16=True)),
    ]

    def ort_engine(precision: str, device: str) -> Callable[[], Any]:
        def make() -> Any:
            path = work / f"model-{precision}.onnx"
            if not path.exists():  # parity of the file itself runs on the CPU (fp32/fp16) or the GPU (bf16)
                export_onnx(model, path, precision=precision)
            opts = {"trt_cache_dir": str(work / "ort-trt-cache")} if device == "tensorrt" else {}
            return open_engine(path, "onnxruntime", device=device, **opts)

        return make

    if "CUDAExecutionProvider" in providers:
        out += [("ort_cuda_fp32", "fp32", ort_engine("fp32", "cuda")),
                ("ort_cuda_fp16", "fp16", ort_engine("fp16", "cuda"))]
    else:
        skipped["ort_cuda"] = "onnxruntime has no CUDAExecutionProvider (pip install .[gpu])"
    if "TensorrtExecutionProvider" in providers:
        out.append(("ort_tensorrt_fp32", "fp32", ort_engine("fp32", "tensorrt")))
    else:
        skipped["ort_tensorrt"] = "onnxruntime has no TensorrtExecutionProvider"
    if _tensorrt_version() is not None:
        for precision in [s.strip() for s in args.trt_precisions.split(",") if s.strip()]:
            def make(precision: str = precision) -> Any:
                plan = work / f"model-{precision}.plan"
                build_tensorrt(model, plan, precision=precision, min_batch=1, opt_batch=args.batch,
                               max_batch=max(args.max_batch, args.batch))
                return open_engine(plan, "tensorrt")

            out.append((f"tensorrt_{precision}", precision, make))
    else:
        skipped["tensorrt"] = "the tensorrt package is not installed (pip install .[trt])"
    for k, v in skipped.items():
        print(f"skipping {k}: {v}")
    return out


def _decode(engine: Any, task: Any, data: Any, sname: str, batch: int, report: dict[str, Any], name: str,
            evaluate: Any, build_strategy: Any) -> dict[str, Any]:
    strategy = build_strategy(sname)
    torch.cuda.synchronize()
    res = evaluate(engine, task, data, strategy, batch_size=batch, device=engine.device, seed=0)
    torch.cuda.synchronize()
    out = {k: v for k, v in res.summary().items() if k in ("solved", "cell_accuracy", "nfe_mean", "puzzles_per_s",
                                                           "seconds")}
    out["deterministic"] = bool(strategy.deterministic)
    ref = report.setdefault("_predictions", {}).get(sname)
    if name == "torch_cuda_fp32":
        report["_predictions"][sname] = res.predictions
    elif ref is not None and strategy.deterministic:
        out["same_as_torch_cuda_fp32"] = float((res.predictions == ref).all(axis=1).mean())
    print(f"   {sname:22s} solved {100 * out['solved']:5.1f}%  NFE {out['nfe_mean']:5.1f}  "
          f"{out['puzzles_per_s']:8.1f} puzzles/s" + (f"  same {100 * out['same_as_torch_cuda_fp32']:.1f}%"
                                                      if "same_as_torch_cuda_fp32" in out else ""))
    return out


if __name__ == "__main__":
    sys.exit(main())
