"""GPU check: every GPU engine on one model - parity with torch on the CPU, forward passes/s, puzzles/s per strategy.

``python tools/gpu_check.py`` parses its flags and calls :func:`gpu_check`. Engines (each only where its software is
installed; a missing one is listed in the report with the reason, never silently dropped): torch CUDA fp32 and bf16
autocast; onnxruntime with the CUDA provider (fp32, fp16 exports) and with its TensorRT provider (fp32); TensorRT
plans (fp32, fp16; add bf16 with ``trt_precisions``). For each engine: logit parity against torch fp32 on the CPU
(:mod:`unmask.export.parity`, same tolerances as export), forward passes per second at several batch sizes, and for
each strategy the solved rate, NFE, puzzles/s and (for deterministic strategies) whether the decoded puzzles equal
those of torch CUDA fp32. Without a GPU it stops at once with one line.

The parts that need no GPU (the no-GPU exit, the engine list, :func:`check_engines` with any engines, writing the
report) run on the CPU in ``tests/export/test_gpu_check.py``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: (name, parity label, factory) for one engine to check; the factory opens (and, if needed, builds) the engine.
EngineFactory = tuple[str, str, Callable[[], Any]]


def no_gpu_message(prog: str = "tools/gpu_check.py") -> str:
    return (
        f"{prog} needs a CUDA GPU, but torch {torch.__version__} "
        f"(CUDA build: {torch.version.cuda or 'no'}) sees none; run it on a machine with an NVIDIA GPU and a CUDA "
        "build of torch (add onnxruntime-gpu with `pip install .[gpu]` and TensorRT with `pip install .[trt]` to "
        "check those engines too)"
    )


def _synchronize(device: Any) -> None:
    """Wait for the device's queued work (timings and results only mean something after it); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def forward_rates(engine: Any, tokens: torch.Tensor, batches: list[int], budget: float) -> dict[str, Any]:
    """Forward passes per second for each batch size, each timed for at least ``budget`` seconds and 5 calls."""
    out = {}
    for b in batches:
        reps = -(-b // tokens.shape[0])
        x = tokens.repeat(reps, 1)[:b].to(engine.device)
        with torch.inference_mode():
            engine(x)
            _synchronize(engine.device)
            n, t0 = 0, time.perf_counter()
            while n < 5 or time.perf_counter() - t0 < budget:
                engine(x)
                n += 1
            _synchronize(engine.device)
            dt = (time.perf_counter() - t0) / n
        out[str(b)] = {"calls_per_s": 1.0 / dt, "rows_per_s": b / dt, "ms_per_call": 1000.0 * dt}
    return out


def tensorrt_version() -> str | None:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def engine_factories(model: str, work: Path, providers: list[str], skipped: dict[str, str], *,
                     trt_precisions: str = "fp32,fp16", batch: int = 256, max_batch: int = 1024,
                     trt_version: str | None = None) -> list[EngineFactory]:
    """The engines to check for ``model``, given onnxruntime's ``providers`` and the installed TensorRT
    (``trt_version``); each one that cannot run here is recorded in ``skipped`` with the reason and printed."""
    from unmask.core.decoding.runtime import open_engine

    out: list[EngineFactory] = [
        ("torch_cuda_fp32", "fp32", lambda: open_engine(model, "torch", device="cuda")),
        ("torch_cuda_bf16", "bf16", lambda: open_engine(model, "torch", device="cuda", bf16=True)),
    ]

    def ort_engine(precision: str, device: str) -> Callable[[], Any]:
        def make() -> Any:
            from unmask.export.onnx import export_onnx

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
    if trt_version is not None:
        for precision in [s.strip() for s in trt_precisions.split(",") if s.strip()]:
            def make(precision: str = precision) -> Any:
                from unmask.export.tensorrt import build_tensorrt

                plan = work / f"model-{precision}.plan"
                build_tensorrt(model, plan, precision=precision, min_batch=1, opt_batch=batch,
                               max_batch=max(max_batch, batch))
                return open_engine(plan, "tensorrt")

            out.append((f"tensorrt_{precision}", precision, make))
    else:
        skipped["tensorrt"] = "the tensorrt package is not installed (pip install .[trt])"
    for k, v in skipped.items():
        print(f"skipping {k}: {v}")
    return out


def decode_check(engine: Any, task: Any, data: Any, sname: str, batch: int, predictions: dict[str, Any],
                 name: str) -> dict[str, Any]:
    """Decode ``data`` with strategy ``sname`` on ``engine``; compare with torch CUDA fp32's puzzles (kept in
    ``predictions``, which the torch_cuda_fp32 engine fills) for deterministic strategies."""
    from unmask.core.evaluate import evaluate
    from unmask.core.strategy import build_strategy

    strategy = build_strategy(sname)
    _synchronize(engine.device)
    res = evaluate(engine, task, data, strategy, batch_size=batch, device=engine.device, seed=0)
    _synchronize(engine.device)
    out = {k: v for k, v in res.summary().items() if k in ("solved", "cell_accuracy", "nfe_mean", "puzzles_per_s",
                                                           "seconds")}
    out["deterministic"] = bool(strategy.deterministic)
    ref = predictions.get(sname)
    if name == "torch_cuda_fp32":
        predictions[sname] = res.predictions
    elif ref is not None and strategy.deterministic:
        out["same_as_torch_cuda_fp32"] = float((res.predictions == ref).all(axis=1).mean())
    print(f"   {sname:22s} solved {100 * out['solved']:5.1f}%  NFE {out['nfe_mean']:5.1f}  "
          f"{out['puzzles_per_s']:8.1f} puzzles/s" + (f"  same {100 * out['same_as_torch_cuda_fp32']:.1f}%"
                                                      if "same_as_torch_cuda_fp32" in out else ""))
    return out


def check_engines(factories: list[EngineFactory], *, task: Any, data: Any, tokens: torch.Tensor,
                  reference: torch.Tensor, strategies: list[str], batch: int, forward_batches: list[int],
                  budget: float) -> dict[str, dict[str, Any]]:
    """Open each engine and check it (parity with ``reference``, forward rates, decoding per strategy).

    Returns one entry per engine; an engine that fails to open or run gets an ``error`` (and, for an unexpected
    exception, a short ``traceback``) and the others are still checked.
    """
    from unmask.core.errors import UnmaskError
    from unmask.export.parity import check_parity

    engines: dict[str, dict[str, Any]] = {}
    predictions: dict[str, Any] = {}
    for name, label, make in factories:
        print(f"== {name}")
        entry: dict[str, Any] = {"label": label}
        engines[name] = entry
        engine = None
        try:
            t0 = time.perf_counter()
            engine = make()
            entry["open_seconds"] = round(time.perf_counter() - t0, 1)
            entry["parity"] = check_parity(reference, engine, tokens, mask_id=task.mask_id, label=label,
                                           what=name, enforce=False)
            entry["forward"] = forward_rates(engine, tokens, forward_batches, budget)
            print("   forward passes/s: " + ", ".join(f"b={b}: {v['calls_per_s']:.0f}"
                                                    for b, v in entry["forward"].items()))
            entry["decode"] = {}
            for sname in strategies:
                entry["decode"][sname] = decode_check(engine, task, data, sname, batch, predictions, name)
        except Exception as exc:  # noqa: BLE001 - one failing engine must not hide the others' results
            entry["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            if not isinstance(exc, UnmaskError):
                entry["traceback"] = traceback.format_exc(limit=6)
            print(f"   FAILED: {entry['error']}")
        finally:
            engine = None
            torch.cuda.empty_cache()
    return engines


def failed_engines(report: dict[str, Any]) -> list[str]:
    """Engines of ``report`` that errored or failed parity."""
    return [n for n, e in report["engines"].items() if "error" in e or not e.get("parity", {}).get("passed", False)]


def write_report(report: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write ``report`` as JSON to ``out`` atomically (temp file + rename), creating its folder."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def machine_info(ort: Any) -> dict[str, Any]:
    """The GPU and the software versions the check ran with."""
    return {
        "gpu": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": str(torch.__version__), "cuda": torch.version.cuda, "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(), "python": platform.python_version(),
        "tensorrt": tensorrt_version(),
    }


def gpu_check(model: str = "models/sudoku-default", out: str = "results/gpu_check.json", *, puzzles: int = 1000,
              batch: int = 256, strategies: str = "all", forward_batches: str = "1,32,256,1024",
              trt_precisions: str = "fp32,fp16", max_batch: int = 1024, quick: bool = False,
              prog: str = "tools/gpu_check.py") -> int:
    """Check every GPU engine on ``model`` and write the report to ``out``; print progress and a summary.

    Returns the exit status: 0 all engines pass, 1 an engine errored or failed parity, 2 no GPU or a user error
    (printed as one ``error: ...`` line).
    """
    if not torch.cuda.is_available():
        print(f"error: {no_gpu_message(prog)}", file=sys.stderr)
        return 2

    from unmask.core.decoding.runtime import open_engine
    from unmask.core.errors import UnmaskError
    from unmask.core.models import load_model
    from unmask.core.registry import strategies as strategy_registry
    from unmask.export.parity import parity_inputs, run_batched

    if quick:
        puzzles = min(puzzles, 200)
        if strategies == "all":
            strategies = "margin,top_prob"
    t_start = time.perf_counter()
    try:
        task, _module, _config = load_model(model)
    except UnmaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    names = strategy_registry.names() if strategies == "all" else [s.strip() for s in strategies.split(",")]
    tokens = parity_inputs(task)
    with torch.inference_mode():
        reference = run_batched(open_engine(model, "torch"), tokens)  # torch fp32 on the CPU
    data = task.generate("test", puzzles, 0)
    fwd_batches = [int(b) for b in forward_batches.split(",")]
    budget = 0.5 if quick else 2.0

    import onnxruntime as ort

    report: dict[str, Any] = {
        "model": model,
        "machine": machine_info(ort),
        "puzzles": puzzles, "batch": batch, "strategies": names,
        "engines": {}, "skipped": {},
    }
    with tempfile.TemporaryDirectory(prefix="unmask-gpu-check-") as work_s:
        factories = engine_factories(model, Path(work_s), ort.get_available_providers(), report["skipped"],
                                     trt_precisions=trt_precisions, batch=batch, max_batch=max_batch,
                                     trt_version=tensorrt_version())
        report["engines"] = check_engines(factories, task=task, data=data, tokens=tokens, reference=reference,
                                          strategies=names, batch=batch, forward_batches=fwd_batches, budget=budget)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    path = write_report(report, out)
    print(f"wrote {path} ({report['seconds']}s)")
    failed = failed_engines(report)
    if failed:
        print(f"engines failing parity or erroring: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
