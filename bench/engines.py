#!/usr/bin/env python
"""CPU engine benchmark: torch fp32, torch bf16, onnxruntime fp32 and onnxruntime int8 on one model.

For each engine and batch size (1, 32, 256): forward passes per second on real puzzle inputs, and puzzles per second
with margin decoding (argmax values, no noise, ``unmask.core.evaluate.evaluate``), plus the solved rate and whether
each engine's decoded puzzles are identical to torch fp32's. Prints the ratios to torch fp32 and writes
``results/engines.json`` and ``results/engines.md``.

    python bench/engines.py --model models/sudoku-default            # full: decodes one full batch per size
    python bench/engines.py --model models/sudoku-default --quick    # ~2 minutes on a busy 2-core machine

The ONNX files are exported (with their parity check) into a temporary folder unless ``--onnx``/``--onnx-int8`` are
given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ENGINES = ("torch_fp32", "torch_bf16", "ort_fp32", "ort_int8")
BATCHES = (1, 32, 256)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def export_in_subprocess(model: str, out: Path, quantize: str | None) -> dict[str, Any]:
    """Export (with its parity check) in a child process: the dynamo exporter leaves torch-global state (caches,
    hundreds of thousands of objects) behind that should not sit under the torch timings of this process."""
    import subprocess

    report = out.with_suffix(".report.json")
    cmd = [sys.executable, "-c", "import sys; from unmask.export.cli import main; sys.exit(main(sys.argv[1:]))",
           "--model", model, "--onnx", str(out), "--report", str(report)]
    if quantize:
        cmd += ["--quantize", quantize]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        print(f"  {line}")
    if proc.returncode != 0:
        from unmask.core.errors import CheckpointError

        msg = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise CheckpointError(f"exporting {model} ({quantize or 'fp32'}) failed: {msg}")
    return json.loads(report.read_text())["onnx"]


def open_engines(model: str, which: list[str], threads: int, onnx: str | None, onnx_int8: str | None,
                 work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from unmask.core.decoding.runtime import open_engine

    engines: dict[str, Any] = {}
    exports: dict[str, Any] = {}
    if "torch_fp32" in which:
        engines["torch_fp32"] = open_engine(model, "torch", threads=threads)
    if "torch_bf16" in which:
        engines["torch_bf16"] = open_engine(model, "torch", threads=threads, bf16=True)
    for name, given, quant in (("ort_fp32", onnx, None), ("ort_int8", onnx_int8, "int8")):
        if name not in which:
            continue
        path = given
        if path is None:
            path = str(work / f"{name}.onnx")
            rep = export_in_subprocess(model, Path(path), quant)
            exports[name] = {k: rep[k] for k in ("bytes", "export_seconds")} | {
                "parity": {k: rep["parity"][k] for k in ("max_abs_diff", "argmax_agreement", "margin_agreement",
                                                         "tolerance", "passed")}
            }
        engines[name] = open_engine(path, "onnxruntime", device="cpu", threads=threads)
    return engines, exports


def forward_rate(engine: Any, x: torch.Tensor, budget: float, min_calls: int = 3) -> dict[str, float]:
    """Forward passes per second on ``x`` (B, L): warm-up, then repeat until ``budget`` seconds and ``min_calls``."""
    with torch.inference_mode():
        engine(x)
        n, t0 = 0, time.perf_counter()
        while n < min_calls or time.perf_counter() - t0 < budget:
            engine(x)
            n += 1
        dt = (time.perf_counter() - t0) / n
    return {"calls_per_s": 1.0 / dt, "rows_per_s": x.shape[0] / dt, "ms_per_call": 1000.0 * dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/sudoku-default", help="checkpoint (model or run directory)")
    p.add_argument("--onnx", help="existing fp32 ONNX export of --model (default: export to a temp folder)")
    p.add_argument("--onnx-int8", help="existing int8 ONNX export of --model")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (default 1,32,256)")
    p.add_argument("--decode-batches", help="batch sizes for the decode benchmark (default: --batches; --quick: 1,32)")
    p.add_argument("--decode-puzzles", type=int, help="puzzles per decode run (default: the batch size, at least 8; "
                   "--quick: the batch size, at least 2)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per engine (0 = library default)")
    p.add_argument("--quick", action="store_true",
                   help="short timings, decode at batch 1 and 32 only (torch bf16: batch 1 only)")
    p.add_argument("--out", default="results/engines", help="writes OUT.json and OUT.md")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. what else ran meanwhile)")
    args = p.parse_args(argv)

    from unmask.core.errors import UnmaskError
    from unmask.core.evaluate import evaluate
    from unmask.core.models import load_model
    from unmask.core.strategy import build_strategy

    which = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(which) - set(ENGINES)
    if unknown:
        print(f"error: unknown engine(s) {', '.join(sorted(unknown))}; use {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    dec_default = [b for b in batches if b <= 32] if args.quick else batches
    dec_batches = [int(b) for b in args.decode_batches.split(",")] if args.decode_batches else dec_default
    budget = 0.3 if args.quick else 2.0
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        task, _, config = load_model(args.model)
        with tempfile.TemporaryDirectory(prefix="unmask-bench-") as work:
            print(f"model {args.model}: exporting / opening {', '.join(which)}")
            engines, exports = open_engines(args.model, which, args.threads, args.onnx, args.onnx_int8, Path(work))
            n_max = max([*batches, *dec_batches])
            n_dec = {b: args.decode_puzzles or max(b, 2 if args.quick else 8) for b in dec_batches}
            data = task.generate("test", max(n_max, *n_dec.values()), 0)
            strategy = build_strategy("margin")
            forward: dict[str, dict[str, Any]] = {e: {} for e in engines}
            decode: dict[str, dict[str, Any]] = {e: {} for e in engines}
            preds: dict[tuple[str, int], Any] = {}
            rounds = 1 if args.quick else 2
            for b in batches:
                x = torch.from_numpy(data.inputs[:b])
                for _ in range(rounds):  # engines interleaved, best round kept: less sensitive to load spikes
                    for name, eng in engines.items():
                        r = forward_rate(eng, x, budget, 2 if args.quick else 3)
                        best = forward[name].get(str(b))
                        if best is None or r["calls_per_s"] > best["calls_per_s"]:
                            forward[name][str(b)] = r
                for name in engines:
                    r = forward[name][str(b)]
                    print(f"forward  {name:10s} batch {b:4d}: {r['calls_per_s']:8.2f} passes/s "
                          f"({r['rows_per_s']:8.1f} rows/s)")
            for b in dec_batches:
                sub = data.take(slice(0, n_dec[b]))
                for name, eng in engines.items():
                    if args.quick and name == "torch_bf16" and b != min(dec_batches):
                        continue  # emulated bf16 on CPUs without AMX is ~5x slower than fp32: smallest batch only
                    res = evaluate(eng, task, sub, strategy, batch_size=b, device=eng.device)
                    preds[(name, b)] = res.predictions
                    decode[name][str(b)] = {
                        "puzzles": len(sub), "puzzles_per_s": res.puzzles_per_s, "solved": res.solved,
                        "cell_accuracy": res.cell_accuracy, "nfe_mean": res.nfe_mean, "seconds": res.seconds,
                    }
                    print(f"decode   {name:10s} batch {b:4d}: {res.puzzles_per_s:8.2f} puzzles/s on {len(sub)} "
                          f"(solved {100 * res.solved:.1f}%, NFE {res.nfe_mean:.1f})")
            for b in dec_batches:
                ref = preds.get(("torch_fp32", b))
                for name in engines:
                    if ref is not None and (name, b) in preds:
                        same = float((preds[(name, b)] == ref).all(axis=1).mean())
                        decode[name][str(b)]["same_as_torch_fp32"] = same
    except UnmaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

    ratios = _ratios(forward, decode)
    import onnxruntime as ort

    result = {
        "model": args.model,
        "model_config": {"backbone": config["backbone"], "task": config["task"]},
        "mode": "quick" if args.quick else "full",
        "threads": args.threads or torch.get_num_threads(),
        "strategy": strategy.config_dict(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": str(torch.__version__), "onnxruntime": str(ort.__version__)},
        "note": args.note,
        "exports": exports,
        "forward": forward,
        "decode": decode,
        "ratios_vs_torch_fp32": ratios,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print("\nratios to torch fp32 (forward passes/s; puzzles/s):")
    for name, per in ratios.items():
        cells = [f"b={b}: {v['forward']:.2f}x" + (f" / {v['decode']:.2f}x" if v.get("decode") else "")
                 for b, v in per.items()]
        print(f"  {name:10s} " + "  ".join(cells))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["json"] = out.with_suffix(".json").name
    from unmask.core.config import write_json

    write_json(out.with_suffix(".json"), result)
    tmp = out.with_name(f".{out.name}.md.tmp{os.getpid()}")
    tmp.write_text(markdown(result, batches, dec_batches))
    os.replace(tmp, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} ({result['seconds']}s)")
    return 0


def _ratios(forward: dict[str, Any], decode: dict[str, Any]) -> dict[str, Any]:
    base_f, base_d = forward.get("torch_fp32", {}), decode.get("torch_fp32", {})
    out: dict[str, Any] = {}
    for name in forward:
        out[name] = {}
        for b, r in forward[name].items():
            entry: dict[str, float] = {}
            if b in base_f:
                entry["forward"] = r["calls_per_s"] / base_f[b]["calls_per_s"]
            if b in decode[name] and b in base_d:
                entry["decode"] = decode[name][b]["puzzles_per_s"] / base_d[b]["puzzles_per_s"]
            out[name][b] = entry
    return out


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def markdown(r: dict[str, Any], batches: list[int], dec_batches: list[int]) -> str:
    m = r["machine"]
    bb = r["model_config"]["backbone"]
    lines = [
        "# Engine benchmark (CPU)",
        "",
        f"Model `{r['model']}` ({bb.get('name')}, d_model {bb.get('d_model')}, {bb.get('n_layers')} layers); "
        f"{r['mode']} mode; {r['threads']} thread(s) per engine; {m['cpu']} ({m['cores']} cores); torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}. Decoding: margin, argmax values, no noise, "
        f"{r['strategy'].get('steps')} steps.",
        "",
    ]
    if r.get("note"):
        lines += [f"Note: {r['note']}", ""]
    head = ["engine"] + [f"passes/s b={b}" for b in batches] + [f"puzzles/s b={b}" for b in dec_batches]
    head += ["solved", "same output as torch fp32"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per in r["forward"].items():
        cells = [name]
        for b in batches:
            v = per.get(str(b))
            ratio = r["ratios_vs_torch_fp32"][name].get(str(b), {}).get("forward")
            cells.append(_num(v["calls_per_s"]) + (f" ({ratio:.2f}x)" if ratio and name != "torch_fp32" else "")
                         if v else "-")
        dec = r["decode"].get(name, {})
        for b in dec_batches:
            v = dec.get(str(b))
            ratio = r["ratios_vs_torch_fp32"][name].get(str(b), {}).get("decode")
            cells.append(_num(v["puzzles_per_s"]) + (f" ({ratio:.2f}x)" if ratio and name != "torch_fp32" else "")
                         if v else "-")
        last = dec[max(dec, key=int)] if dec else None  # the largest decode batch this engine ran
        cells.append(f"{100 * last['solved']:.1f}% of {last['puzzles']}" if last else "-")
        cells.append(f"{100 * last['same_as_torch_fp32']:.0f}%" if last and "same_as_torch_fp32" in last else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratios in parentheses are relative to torch fp32 at the same batch size. "
              "`solved` and `same output` are for the largest decode batch each engine ran.", ""]
    if r.get("exports"):
        lines += ["Export parity (onnxruntime vs torch fp32, 64 task inputs):", ""]
        for name, e in r["exports"].items():
            p = e["parity"]
            lines.append(f"- {name}: max |dlogit| {p['max_abs_diff']:.3g} (tolerance {p['tolerance']:.3g}), argmax "
                         f"agreement {100 * p['argmax_agreement']:.2f}%, top-margin agreement "
                         f"{100 * p['margin_agreement']:.2f}%")
        lines.append("")
    lines.append(f"Raw numbers: `{r['json']}`.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
