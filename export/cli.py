"""``unmask export`` and ``tools/export.py``: ONNX export and TensorRT build from the command line.

    unmask export --model models/sudoku-default --onnx m.onnx                     # fp32, parity-checked
    unmask export --model models/sudoku-default --onnx m-int8.onnx --quantize int8 --accuracy 200
    unmask export --model models/sudoku-default --trt m.plan --max-batch 512      # GPU + TensorRT only
    unmask export --from-onnx m.onnx --trt m.plan
    unmask export --model ~/models/LLaDA-8B-Instruct --onnx llada.onnx                # a text model (index, lengths)
    unmask export --from-onnx llada.onnx --trt llada.plan --max-batch 32 --max-seq 1024 --opt-k 32

``run`` raises :class:`unmask.core.errors.UnmaskError` for user mistakes and missing devices; the caller prints it as
one line (``unmask``'s main does, and so does :func:`main` here).
"""

from __future__ import annotations

import argparse
import json
import sys

from unmask.core.errors import ConfigError
from unmask.export.metadata import PRECISIONS, QUANTIZATIONS

HELP = "export a model to ONNX or a TensorRT plan"
"""``unmask export``: this module is the ``export`` entry of the ``unmask_commands`` group (pyproject.toml)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export options, added to ``parser`` (a subcommand parser of ``unmask`` or a standalone one)."""
    parser.add_argument("--model", help="checkpoint: a model directory, a run directory (its newest checkpoint) or a "
                        "model name (unmask list models)")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX file")
    parser.add_argument("--trt", metavar="OUT.plan",
                        help="build a TensorRT plan (+ OUT.plan.json); needs TensorRT and a GPU")
    parser.add_argument("--from-onnx", metavar="IN.onnx", help="build the TensorRT plan from this exported ONNX file")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="graph dtype: fp32 (default), fp16 or bf16 (fp16/bf16 are for GPU engines)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="int8: onnxruntime dynamic quantization, for onnxruntime on the CPU")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18, default 18)")
    parser.add_argument("--export-batch", type=int, default=2, help="batch of the example input traced (>= 2)")
    parser.add_argument("--dynamic-seq", action="store_true",
                        help="export the sequence axis as dynamic (bounded by the trained length)")
    parser.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch (default 1)")
    parser.add_argument("--opt-batch", type=int, default=None,
                        help="TensorRT profile: batch tuned for (default min(64, --max-batch))")
    parser.add_argument("--max-batch", type=int, default=256,
                        help="TensorRT profile: largest batch (default 256; bigger batches are split)")
    parser.add_argument("--opt-seq", type=int, default=None,
                        help="TensorRT profile of a text model: row length tuned for (default min(512, --max-seq))")
    parser.add_argument("--max-seq", type=int, default=None,
                        help="TensorRT profile of a text model: longest row (default min(context, 2048))")
    parser.add_argument("--opt-k", type=int, default=None, help="TensorRT profile of a text model: positions "
                        "scored per row tuned for (default 32, a block; at most --max-k)")
    parser.add_argument("--max-k", type=int, default=None, help="TensorRT profile of a text model: most positions "
                        "scored per row in one pass (default --max-seq; wider requests run in chunks)")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit (GiB)")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check against the PyTorch model")
    parser.add_argument("--trust-remote-code", action="store_true", help="a Hugging Face directory with its own "
                        "modeling code (LLaDA, Dream): run it to export it (this EXECUTES THE CHECKPOINT'S PYTHON "
                        "CODE)")
    parser.add_argument("--accuracy", type=int, default=0, metavar="N",
                        help="also decode N test puzzles (margin) with torch and the export and report solved rates")
    parser.add_argument("--report", metavar="JSON", help="write the export report (parity numbers, sizes) here")


def run(args: argparse.Namespace) -> int:
    """Carry out ``unmask export``; returns the exit status (errors are raised as UnmaskError)."""
    from unmask.core.config import write_json

    for flag, path in (("--model", args.model), ("--from-onnx", args.from_onnx), ("--onnx", args.onnx),
                       ("--trt", args.trt), ("--report", args.report)):
        if path is not None and not str(path).strip():
            raise ConfigError(f"{flag} is empty; give a path")
    if not args.onnx and not args.trt:
        raise ConfigError("say what to write: --onnx OUT.onnx and/or --trt OUT.plan")
    if args.from_onnx and not args.trt:
        raise ConfigError("--from-onnx is the input of a TensorRT build; add --trt OUT.plan")
    if args.from_onnx and args.onnx:
        raise ConfigError("--from-onnx and --onnx both name the ONNX file; pass one")
    if not args.model and not args.from_onnx:
        raise ConfigError("--model CKPT is required (or --from-onnx IN.onnx with --trt)")
    if args.model:  # a path as given, else a model name (unmask list models)
        from unmask.core.resources import find_model

        args.model = str(find_model(args.model))
    if args.trt and args.quantize:
        raise ConfigError("--quantize int8 is for onnxruntime on the CPU; TensorRT plans take --precision fp16|bf16")
    from pathlib import Path

    from unmask.core.files import check_outputs, check_writable, remove_stale_temps
    from unmask.export.metadata import sidecar_path

    outputs = [(flag, path) for flag, path in (("--onnx", args.onnx), ("--trt", args.trt),
                                                ("--trt (its sidecar)", args.trt and sidecar_path(args.trt)),
                                                ("--report", args.report)) if path]
    for flag, path in outputs:  # before the export work starts
        check_writable(path, flag)
    check_outputs(outputs, [(flag, path) for flag, path in (("--model", args.model), ("--from-onnx", args.from_onnx))
                            if path])
    if args.accuracy < 0:
        raise ConfigError(f"--accuracy {args.accuracy}: give a number of puzzles >= 0")
    if args.accuracy and args.model:
        _check_accuracy_fits(args.model, args.accuracy)
    for path in (args.onnx, args.trt):  # temporary files of exports that were killed (never a live process's)
        if path:
            remove_stale_temps(Path(path).parent, Path(path).name)
    report: dict = {}
    settings = ["backbone.trust_remote_code=true"] if getattr(args, "trust_remote_code", False) else None
    if args.trt:
        from unmask.export.tensorrt import build_tensorrt, require_tensorrt

        require_tensorrt("--trt (building a TensorRT plan)")  # fail before any export work
        report["tensorrt"] = build_tensorrt(
            args.model, args.trt, from_onnx=args.from_onnx, onnx_out=args.onnx, precision=args.precision,
            min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
            workspace_gb=args.workspace_gb, opset=args.opset, parity=not args.no_parity,
            opt_seq=args.opt_seq, max_seq=args.max_seq, opt_k=args.opt_k, max_k=args.max_k,
            model_settings=settings,
        )
    else:
        from unmask.export.onnx import export_onnx

        report["onnx"] = export_onnx(
            args.model, args.onnx, batch=args.export_batch, precision=args.precision, quantize=args.quantize,
            opset=args.opset, parity=not args.no_parity, dynamic_seq=args.dynamic_seq,
            accuracy_puzzles=args.accuracy, model_settings=settings,
        )
    if args.report:
        write_json(args.report, _jsonable(report))
        print(f"report written to {args.report}")
    return 0


def _check_accuracy_fits(model: str, n: int) -> None:
    """``--accuracy N`` generates N test examples of the model's task: refused before the export when they cannot
    fit in memory (the estimate ``unmask eval --generate`` uses)."""
    from unmask.core.memory import check_fits
    from unmask.core.task import build_task
    from unmask.core.training.checkpoint import read_config, resolve_model_dir

    task = build_task(read_config(resolve_model_dir(model))["task"], "model task")
    check_fits(32.0 * n * task.seq_len, f"--accuracy {n:,}", "decode fewer puzzles")


def _jsonable(x):  # noqa: ANN001, ANN202
    return json.loads(json.dumps(x, default=lambda o: getattr(o, "tolist", lambda: str(o))()))


def main(argv: list[str] | None = None) -> int:
    """``tools/export.py``: the ``unmask export`` command (one-line errors, exit 2, never a traceback)."""
    from unmask.core.cli import main as unmask_main

    return unmask_main(["export", *(sys.argv[1:] if argv is None else argv)])
