"""TensorRT build: an exported ONNX file -> a serialized TensorRT plan (``.plan``) plus its JSON sidecar.

Written against the TensorRT 10/11 Python API: ``builder.create_network`` with the STRONGLY_TYPED flag (TensorRT 10;
in 11 every network is strongly typed and the flag is ignored), so the plan's precision is the ONNX graph's
(export with ``--precision fp16|bf16`` for a half-precision plan - no builder precision flags are set);
``trt.OnnxParser``; one optimization profile over the batch axis (min/opt/max from the caller; the sequence axis is
pinned to the task's length); a workspace limit via ``set_memory_pool_limit``; ``build_serialized_network``.

A plan only runs on the TensorRT version and GPU it was built with, so the sidecar ``X.plan.json`` records both, next
to the resolved config, the task layout and the profile; the ``tensorrt`` runtime reads it. After the build, the
plan is opened with that runtime and checked for parity against the PyTorch model; the result goes into the sidecar.

Text models (an ONNX file with ``lengths`` and ``index`` inputs, :mod:`unmask.export.onnx`): the profile spans the
batch, the row length L (1 .. ``max_seq``, default min(context, 2048)) and the index width K (1 .. ``max_k``, default
``max_seq``), tuned for (``opt_batch``, ``opt_seq`` = 512, ``opt_k`` = 32: a LLaDA block) by default; every input gets
``IOptimizationProfile.set_shape`` (tokens (B, L), lengths (B,), index (B, K)). The sidecar records all three ranges
and carries the tokenizer (``unmask.files``).

Without TensorRT or without a GPU every entry point fails at once with one line naming what is missing. None of the
text path has run with TensorRT (no GPU with TensorRT where it was written); its host-side logic is tested with fakes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unmask.core.errors import CheckpointError, ConfigError, DeviceError
from unmask.export.metadata import (
    K_DYN_SEQ,
    K_FORMAT,
    PLAN_FORMAT,
    PRECISIONS,
    ArtifactInfo,
    read_onnx_info,
    sidecar_path,
    write_bytes_atomic,
)
from unmask.export.parity import PARITY_ROWS, check_parity, parity_inputs

INSTALL_HINT = "pip install .[trt]"


def require_tensorrt(what: str) -> Any:
    """The ``tensorrt`` module, or one DeviceError naming everything that is missing (the package, a GPU)."""
    missing = []
    trt = None
    try:
        import tensorrt as trt  # type: ignore[no-redef]
    except ImportError as exc:
        detail = "not installed" if getattr(exc, "name", None) == "tensorrt" else f"import failed: {exc}"
        missing.append(f"the tensorrt Python package ({detail}; on a machine with an NVIDIA GPU: {INSTALL_HINT})")
    if not torch.cuda.is_available():
        missing.append(f"a CUDA GPU (torch {torch.__version__}, CUDA build {torch.version.cuda or 'no'}, sees none)")
    if missing:
        raise DeviceError(f"{what} needs {' and '.join(missing)}")
    return trt


def torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
        "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool, "UINT8": torch.uint8,
    }
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return tdt
    raise CheckpointError(f"TensorRT tensor type {dt} has no torch equivalent")


def resolve_profile(min_batch: int, opt_batch: int | None, max_batch: int, workspace_gb: float) -> tuple[int, int, int]:
    """(min, opt, max) batch of the optimization profile; ``opt_batch`` None = min(64, max_batch) (at least min)."""
    if opt_batch is None:
        opt_batch = max(min_batch, min(64, max_batch))
    _check_profile(min_batch, opt_batch, max_batch, workspace_gb)
    return min_batch, opt_batch, max_batch


TEXT_MAX_SEQ = 2048  # default longest row of a text plan (attention memory grows with L^2 per row)
TEXT_OPT_SEQ = 512
TEXT_OPT_K = 32  # a LLaDA block: the index width the decode loop asks for with --block-length 32


def text_profile(seq_len: int, *, opt_seq: int | None = None, max_seq: int | None = None, opt_k: int | None = None,
                 max_k: int | None = None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """((min, opt, max) row length, (min, opt, max) index width K) of a text plan's profile for a model whose
    context is ``seq_len``; None picks the default (see the module docstring). One-line errors for impossible
    ranges."""
    if max_seq is None:
        max_seq = min(seq_len, TEXT_MAX_SEQ)
    if not 1 <= max_seq <= seq_len:
        raise ConfigError(f"--max-seq {max_seq} must lie in 1..{seq_len} (the model's context)")
    if opt_seq is None:
        opt_seq = min(TEXT_OPT_SEQ, max_seq)
    if not 1 <= opt_seq <= max_seq:
        raise ConfigError(f"--opt-seq {opt_seq} must lie in 1..--max-seq ({max_seq})")
    if max_k is None:
        max_k = max_seq
    if not 1 <= max_k <= max_seq:
        raise ConfigError(f"--max-k {max_k} must lie in 1..--max-seq ({max_seq}): positions are indices into a row")
    if opt_k is None:
        opt_k = min(TEXT_OPT_K, max_k, opt_seq)
    if not 1 <= opt_k <= max_k:
        raise ConfigError(f"--opt-k {opt_k} must lie in 1..--max-k ({max_k})")
    return (1, opt_seq, max_seq), (1, opt_k, max_k)


Shape = tuple[int, ...]


def profile_shapes(info: ArtifactInfo, batch: tuple[int, int, int],
                   text: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
                   ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input of the plan: tokens (B, L) for puzzles (L pinned to the task's length);
    tokens (B, L), lengths (B,), index (B, K) for text models (``text``: :func:`text_profile`)."""
    lo, opt, hi = batch
    if not info.inputs:
        L = info.seq_len
        return {info.input_name: ((lo, L), (opt, L), (hi, L))}
    assert text is not None
    seq, k = text
    return {info.input_name: ((lo, seq[0]), (opt, seq[1]), (hi, seq[2])),
            "lengths": ((lo,), (opt,), (hi,)),
            "index": ((lo, k[0]), (opt, k[1]), (hi, k[2]))}


def _check_profile(min_batch: int, opt_batch: int, max_batch: int, workspace_gb: float) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            f"batch profile must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
            f"{min_batch} / {opt_batch} / {max_batch}"
        )
    if workspace_gb <= 0:
        raise ConfigError(f"--workspace-gb must be > 0, got {workspace_gb}")


def build_plan(trt: Any, onnx_path: Path, info: ArtifactInfo, *, min_batch: int, opt_batch: int, max_batch: int,
               workspace_gb: float, log: Callable[[str], Any],
               text: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> bytes:
    """Serialized plan bytes for ``onnx_path`` (parser errors are printed one per line, then raised as one)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:  # TensorRT 10: opt in; TensorRT 11: always on, flag kept for compatibility
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        for e in errors:
            print(f"tensorrt: {' '.join(e.split())}", file=sys.stderr)
        first = " ".join(errors[0].split())[:300] if errors else "no message"
        raise CheckpointError(
            f"TensorRT's ONNX parser rejected '{onnx_path}' with {len(errors)} error(s) (one per line above); "
            f"first: {first}"
        )
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    want = [info.input_name, *info.inputs]
    if [t.name for t in inputs] != want:
        raise CheckpointError(f"'{onnx_path}' has inputs {[t.name for t in inputs]}, expected {want}")
    shapes = profile_shapes(info, (min_batch, opt_batch, max_batch), text)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if info.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and rounds fp32 matmul inputs to 10 mantissa bits: an fp32 plan would then miss the
        # fp32 parity tolerance against the PyTorch reference. fp16/bf16 plans are typed by their ONNX file.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)  # IOptimizationProfile.set_shape(input, min, opt, max)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    seq = f"seq {'/'.join(map(str, text[0]))}, index {'/'.join(map(str, text[1]))}" if text else f"seq {info.seq_len}"
    log(f"building TensorRT plan (batch {min_batch}/{opt_batch}/{max_batch}, {seq}, {info.precision}, "
        f"workspace {workspace_gb:g} GiB); this takes a while")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckpointError(
            f"TensorRT could not build a plan from '{onnx_path}' (see its log above); try a larger --workspace-gb or a "
            "smaller --max-batch"
        )
    log(f"built in {time.perf_counter() - t0:.1f}s")
    return bytes(memoryview(serialized))


def build_tensorrt(
    model_path: str | os.PathLike | None,
    out_path: str | os.PathLike,
    *,
    from_onnx: str | os.PathLike | None = None,
    onnx_out: str | os.PathLike | None = None,
    precision: str = "fp32",
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 256,
    workspace_gb: float = 4.0,
    opset: int = 18,
    parity: bool = True,
    parity_rows: int = PARITY_ROWS,
    log: Callable[[str], Any] | None = print,
    opt_seq: int | None = None,
    max_seq: int | None = None,
    opt_k: int | None = None,
    max_k: int | None = None,
    model_settings: list[str] | None = None,
) -> dict[str, Any]:
    """Build ``out_path`` (.plan) and ``out_path.json`` from a checkpoint (exported to ONNX first) or ``from_onnx``.

    ``opt_batch`` defaults to min(64, ``max_batch``). ``onnx_out``: also keep the intermediate ONNX file there.
    ``opt_seq``, ``max_seq``, ``opt_k``, ``max_k``: a text model's row-length and index-width profile
    (:func:`text_profile`; ignored for puzzle models, whose length is fixed).
    ``precision`` applies when exporting from a checkpoint;
    with ``from_onnx`` the plan has the ONNX file's precision. Parity is checked against the PyTorch checkpoint when
    ``model_path`` is given, else against onnxruntime on the CPU running the same ONNX file.
    """
    from unmask.core.config import write_json

    say = log or (lambda _m: None)
    out = Path(out_path)
    if out.suffix.lower() != ".plan":
        raise ConfigError(f"TensorRT output '{out}' must end in .plan (runtimes are chosen by file suffix)")
    if model_path is None and from_onnx is None:
        raise ConfigError("a TensorRT build needs --model CKPT or --from-onnx FILE.onnx")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    min_batch, opt_batch, max_batch = resolve_profile(min_batch, opt_batch, max_batch, workspace_gb)
    trt = require_tensorrt("--trt (building a TensorRT plan)")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unmask-trt-") as work:
        if from_onnx is not None:
            onnx_path = Path(from_onnx)
            info = read_onnx_info(onnx_path)
            if info.quantize:
                raise ConfigError(f"'{onnx_path}' is {info.quantize}-quantized for onnxruntime on the CPU; build "
                                  "TensorRT plans from an fp32/fp16/bf16 export")
        else:
            from unmask.export.onnx import export_onnx

            assert model_path is not None  # checked above: a model or from_onnx
            onnx_path = Path(onnx_out) if onnx_out is not None else Path(work) / "model.onnx"
            # the ONNX file's own parity runs on the CPU where onnxruntime can (not bf16); the plan is checked below
            export_onnx(model_path, onnx_path, precision=precision, opset=opset,
                        parity=parity and onnx_out is not None and precision != "bf16", log=log,
                        model_settings=model_settings)
            info = read_onnx_info(onnx_path)
        onnx_bytes = onnx_path.read_bytes()
        text = text_profile(info.seq_len, opt_seq=opt_seq, max_seq=max_seq, opt_k=opt_k, max_k=max_k) \
            if info.inputs else None
        plan = build_plan(trt, onnx_path, info, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                          workspace_gb=workspace_gb, log=say, text=text)
        build_s = time.perf_counter() - t0
        dev = torch.cuda.current_device()
        cap = torch.cuda.get_device_capability(dev)
        sidecar: dict[str, Any] = {
            K_FORMAT: PLAN_FORMAT,
            **_flat(info),
            "config": info.config,
            "profile": {"min": min_batch, "opt": opt_batch, "max": max_batch, "seq_len": info.seq_len,
                        **({"seq": dict(zip(("min", "opt", "max"), text[0], strict=True)),
                            "k": dict(zip(("min", "opt", "max"), text[1], strict=True))} if text else {})},
            "build": {
                "tensorrt": str(getattr(trt, "__version__", "?")),
                "gpu": torch.cuda.get_device_name(dev),
                "compute_capability": f"{cap[0]}.{cap[1]}",
                "workspace_gb": workspace_gb,
                "strongly_typed": True,
                "onnx": str(from_onnx or onnx_out or "(temporary)"),
                "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
                "seconds": round(build_s, 1),
            },
            "parity": None,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.plan")
        try:
            write_bytes_atomic(tmp, plan)
            write_json(sidecar_path(tmp), sidecar)
            if parity:
                sidecar["parity"] = _plan_parity(tmp, info, model_path, onnx_path, parity_rows, say,
                                                 max_seq=text[0][2] if text else None, settings=model_settings)
            write_json(sidecar_path(out), sidecar)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
            sidecar_path(tmp).unlink(missing_ok=True)
    say(f"wrote {out} ({len(plan) / 1e6:.2f} MB) and {sidecar_path(out).name}")
    return {"path": str(out), "sidecar": str(sidecar_path(out)), "bytes": len(plan), **sidecar}


def _flat(info: ArtifactInfo) -> dict[str, str]:
    from unmask.export.metadata import (
        K_BACKBONE,
        K_FILES,
        K_INPUT,
        K_INPUTS,
        K_MASK,
        K_OUTPUT,
        K_PRECISION,
        K_QUANT,
        K_SEQ,
        K_TASK,
        K_VERSION,
        K_VOCAB,
        unmask_version,
    )

    flat = {
        K_VERSION: unmask_version(), K_TASK: info.task, K_VOCAB: str(info.vocab_size), K_SEQ: str(info.seq_len),
        K_MASK: str(info.mask_id), K_BACKBONE: info.backbone, K_PRECISION: info.precision,
        K_QUANT: info.quantize or "none", K_DYN_SEQ: "false",  # the profile pins the sequence axis
        K_INPUT: info.input_name, K_OUTPUT: info.output_name,
    }
    if info.inputs:  # a text plan: rows of any length within the profile, the tokenizer carried along
        flat.update({K_DYN_SEQ: "true", K_INPUTS: ",".join(info.inputs)})
        if info.files:
            flat[K_FILES] = json.dumps(info.files, sort_keys=True)
    return flat


def _plan_parity(plan: Path, info: ArtifactInfo, model_path: Any, onnx_path: Path, rows: int,
                 say: Callable[[str], Any], max_seq: int | None = None,
                 settings: list[str] | None = None) -> dict[str, Any]:
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.task import build_task

    task = build_task(info.config["task"], "model task")
    extra = None
    if info.inputs:  # a text plan: random right-padded rows within its profile
        from unmask.export.parity import TEXT_PARITY_ROWS, text_parity_inputs

        feeds = text_parity_inputs(info.vocab_size, info.mask_id, max_seq or info.seq_len, min(rows, TEXT_PARITY_ROWS))
        tokens = feeds.pop("tokens")
        extra = feeds
    else:
        tokens = parity_inputs(task, rows)
    if model_path is not None:
        ref_engine, ref_name = open_engine(model_path, "torch", model=settings or None), "torch fp32"
    else:
        if info.precision == "bf16":
            raise ConfigError("a bf16 ONNX file cannot be run by onnxruntime on the CPU as the parity reference; pass "
                              "--model CKPT too, or --no-parity")
        ref_engine, ref_name = open_engine(onnx_path, "onnxruntime", device="cpu"), f"onnxruntime cpu {info.precision}"
    from unmask.export.parity import run_batched

    with torch.inference_mode():
        reference = run_batched(ref_engine, tokens, extra=extra)
    engine = open_engine(plan, "tensorrt")
    report = check_parity(reference, engine, tokens, mask_id=info.mask_id, label=info.precision,
                          what=f"tensorrt {info.precision} (reference {ref_name})", log=say, extra=extra)
    report["reference"] = ref_name
    return report


def plan_summary(path: str | os.PathLike) -> str:
    """One line about a plan (for listings)."""
    from unmask.export.metadata import read_plan_info

    info = read_plan_info(path)
    p = info.extra.get("profile", {})
    b = info.extra.get("build", {})
    return (f"{path}: {info.task} {info.precision}, batch {p.get('min')}/{p.get('opt')}/{p.get('max')}, TensorRT "
            f"{b.get('tensorrt')} on {b.get('gpu')}; config {json.dumps(info.config.get('backbone', {}))[:80]}")


__all__ = ["build_tensorrt", "build_plan", "profile_shapes", "require_tensorrt", "text_profile", "torch_dtype",
           "plan_summary"]
