"""ONNX export: ``torch.onnx.export(dynamo=True)`` of a trained checkpoint into a self-describing ``.onnx`` file.

The graph maps ``tokens`` (B, L) int64 to ``logits`` (B, L, V) float32 (fp16/bf16 graphs cast their logits to float32
as their last op, so every engine returns the same dtype). The batch axis is dynamic. The sequence axis is fixed at
the task's length by default: tasks here have one sequence length, and a static axis lets onnxruntime and TensorRT
fold the position-embedding slices and reshapes (measured: ~4 % faster with onnxruntime on the CPU, batch 32, the
default Sudoku backbone); ``dynamic_seq=True`` exports it as a dynamic axis bounded by the
trained length (learned positions cannot go beyond it). The resolved config travels in ``metadata_props``
(:mod:`unmask.export.metadata`). Before the file is moved into place it passes ``onnx.checker`` (full check) and a
parity check against the PyTorch model on real task inputs (:mod:`unmask.export.parity`), run by onnxruntime.

Text models: a backbone that takes the engine contract's optional inputs (``inputs = ("lengths", "index")``: the
``hf`` backbone, for a Hugging Face directory or one of unmask's own text models) exports as ``tokens`` (B, L),
``lengths`` (B,), ``index`` (B, K), all int64, to ``logits`` (B, K, V) float32, with B, L (<= the model's context)
and K (<= L) dynamic: the output layer runs at the K requested positions only, as in PyTorch. The task's resolved
sizes (vocabulary, context, mask id, end-of-text ids) are written into the embedded config, and its model files
(the tokenizer) travel inside the file (``unmask.files``, :mod:`unmask.export.metadata`). Parity runs on random
right-padded rows (:func:`unmask.export.parity.text_parity_inputs`), since a Hugging Face directory holds no data.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unmask.core.errors import CheckpointError, ConfigError, DeviceError
from unmask.export.metadata import (
    CHECKSUM_PLACEHOLDER,
    INPUT_NAME,
    K_CHECKSUM,
    K_FILES,
    K_INPUTS,
    K_PRECISION,
    K_QUANT,
    OUTPUT_NAME,
    PRECISIONS,
    QUANTIZATIONS,
    describe,
    encode_files,
    read_onnx_info,
    seal_onnx,
)
from unmask.export.parity import (
    PARITY_ROWS,
    TEXT_PARITY_ROWS,
    check_parity,
    parity_inputs,
    text_parity_inputs,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_OPSET = 18


class LogitsModule(nn.Module):
    """The exported graph: the backbone in the export dtype, logits cast to float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module(tokens).float()  # (B, L, V)


class TextLogitsModule(nn.Module):
    """The exported graph of a text backbone: padding and positions in, logits at those positions out (float32)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.module(tokens, lengths=lengths, index=index).float()  # (B, K, V)


def optional_inputs(module: nn.Module) -> tuple[str, ...]:
    """The engine contract's optional inputs a backbone takes (``()`` for puzzle backbones). A text backbone must take
    both: the graph has one signature."""
    from unmask.export.metadata import OPTIONAL_INPUTS

    names = tuple(n for n in getattr(module, "inputs", ()) if n in OPTIONAL_INPUTS)
    if names and set(names) != set(OPTIONAL_INPUTS):
        raise CheckpointError(f"backbone {type(module).__name__} takes {', '.join(names)} but not all of "
                              f"{', '.join(OPTIONAL_INPUTS)}; ONNX export of text backbones needs both")
    return OPTIONAL_INPUTS if names else ()


def resolved_task_config(task: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the task's sizes written out where its options leave them to be read from the model directory
    (a text task's ``vocab_size = 0``, ``context = 0``, ``mask_id = -1``, ``stop_ids = []``): the artifact has no
    model directory to read them from."""
    out = copy.deepcopy(config)
    section = out["task"]
    for key, value in (("vocab_size", task.vocab_size), ("context", task.seq_len), ("mask_id", task.mask_id),
                       ("stop_ids", list(getattr(task, "stop_ids", ()) or ()))):
        if key in section and value not in (None, []):
            section[key] = value
    return out


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx logs skipped torchvision ops and onnxscript warns about deprecations: not the user's business."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _check_args(precision: str, quantize: str | None, batch: int, opset: int, out: Path) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization '{quantize}'; use one of {', '.join(QUANTIZATIONS)}")
    if quantize and precision != "fp32":
        raise ConfigError(
            f"--quantize {quantize} quantizes an fp32 graph for onnxruntime on the CPU; drop --precision {precision} "
            "(fp16/bf16 are for GPU engines)"
        )
    if batch < 2:
        raise ConfigError(f"export batch must be >= 2 (got {batch}): torch.export turns a batch of 1 into a constant")
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old; the dynamo exporter needs opset >= {MIN_OPSET}")
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"ONNX output '{out}' must end in .onnx (runtimes are chosen by file suffix)")


def _parity_device(precision: str) -> str:
    """Where onnxruntime can run the exported precision: the CPU for fp32/fp16/int8, a GPU provider for bf16."""
    if precision != "bf16":
        return "cpu"
    from unmask.plugins.runtimes.onnxruntime import require_onnxruntime

    ort = require_onnxruntime()

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        missing.append("onnxruntime-gpu (pip install .[gpu])")
    if missing:
        raise DeviceError(
            "onnxruntime runs bf16 graphs only on the GPU, so checking this export's parity needs "
            f"{' and '.join(missing)}; export with --no-parity (a TensorRT build checks its own plan), or use fp16"
        )
    return "cuda"


def _export_graph(module: nn.Module, example: torch.Tensor, *, opset: int, dynamic_seq: bool,
                  extra: dict[str, torch.Tensor] | None = None, max_seq: int | None = None) -> Any:
    """The ONNX ModelProto of ``module`` traced on ``example`` (B >= 2, L) with a dynamic batch axis; with ``extra``
    (a text backbone's ``lengths`` (B,) and ``index`` (B, K)) the sequence axis (<= ``max_seq``) and K are dynamic
    too."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    axes: dict[int, Any] = {0: batch}
    if dynamic_seq:
        axes[1] = Dim("seq", min=1, max=int(max_seq or example.shape[1]))
    args: tuple[torch.Tensor, ...] = (example,)
    shapes: tuple[dict[int, Any], ...] = (axes,)
    if extra:
        assert dynamic_seq and list(extra) == ["lengths", "index"]
        args = (example, extra["lengths"], extra["index"])
        shapes = (axes, {0: batch}, {0: batch, 1: Dim("k", min=1, max=int(max_seq or example.shape[1]))})
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=[INPUT_NAME, *(extra or {})],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - anything the exporter raises means "this backbone did not export"
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter colours its messages
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        hint = " (try without --dynamic-seq)" if dynamic_seq else ""
        raise CheckpointError(f"torch.onnx.export failed: {type(exc).__name__}: {first[:300]}{hint}") from None
    assert program is not None  # torch.onnx.export(dynamo=True) returns the program
    return program.model_proto


def _set_metadata(proto: Any, meta: dict[str, str]) -> None:
    from unmask.export.metadata import unmask_version

    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    for k, v in [*keep, *meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "unmask"
    proto.producer_version = unmask_version()
    if meta.get(K_INPUTS):
        proto.doc_string = (
            f"unmask {meta.get('unmask.task')} model: tokens (B, L<={meta.get('unmask.seq_len')}) int64 right-padded, "
            f"lengths (B,) int64, index (B, K) int64 -> logits (B, K, V={meta.get('unmask.vocab_size')}) float32 at "
            f"index; mask id {meta.get('unmask.mask_id')}; resolved config in metadata 'unmask_config', the "
            "tokenizer in 'unmask.files'"
        )
        return
    proto.doc_string = (
        f"unmask {meta.get('unmask.task')} model: tokens (B, L={meta.get('unmask.seq_len')}) int64 -> logits "
        f"(B, L, V={meta.get('unmask.vocab_size')}) float32; mask id {meta.get('unmask.mask_id')}; "
        "resolved config in metadata 'unmask_config'"
    )


def _quantize_int8(proto: Any, workdir: Path) -> Any:
    """Dynamic int8 quantization (weights int8, activations quantized on the fly) for onnxruntime on the CPU."""
    import onnx

    from unmask.plugins.runtimes.onnxruntime import require_onnxruntime

    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / "fp32.onnx", workdir / "int8.onnx"
    onnx.save_model(proto, str(src))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" advice is logged on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"onnxruntime dynamic int8 quantization failed: {type(exc).__name__}: {exc}") from None
    finally:
        root.setLevel(level)
    return onnx.load(str(dst))


def export_onnx(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    batch: int = 2,
    precision: str = "fp32",
    quantize: str | None = None,
    opset: int = MIN_OPSET,
    parity: bool = True,
    dynamic_seq: bool = False,
    parity_rows: int = PARITY_ROWS,
    accuracy_puzzles: int = 0,
    log: Callable[[str], Any] | None = print,
    model_settings: list[str] | None = None,
) -> dict[str, Any]:
    """Export the checkpoint at ``model_path`` to ``out_path`` (.onnx); returns a report (also printed via ``log``).

    ``precision`` fp32 | fp16 | bf16 (the graph's dtype; fp16/bf16 are for GPU engines), ``quantize`` None | "int8"
    (onnxruntime dynamic quantization, CPU). ``parity``: compare with the PyTorch model on ``parity_rows`` task inputs
    and refuse to write the file if it disagrees beyond the tolerance of its precision. ``accuracy_puzzles`` > 0 also
    decodes that many test puzzles with margin decoding on both models and reports the solved rates.
    ``model_settings``: ``section.key=value`` settings of a Hugging Face directory's config before it is built
    (``backbone.trust_remote_code=true`` for LLaDA and Dream).
    """
    import onnx

    from unmask.core.decoding.runtime import open_engine
    from unmask.core.models import load_model

    out = Path(out_path)
    _check_args(precision, quantize, batch, opset, out)
    label = quantize or precision
    device = _parity_device(precision) if parity or accuracy_puzzles > 0 else "cpu"
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    task, module, config = load_model(model_path, overrides=model_settings or None)
    objective = str(config.get("train", {}).get("objective", "mdm"))
    spec = getattr(module, "spec", None)
    if spec is not None and (int(spec.vocab_size), int(spec.seq_len)) != (int(task.vocab_size), int(task.seq_len)):
        raise ConfigError(f"model '{model_path}' (train.objective = '{objective}') reads its own token layout "
                          f"(vocabulary {spec.vocab_size}, sequences of {spec.seq_len}), not that of task "
                          f"'{task.name}', and export does not write it; decode it with the torch runtime")
    module = module.float().eval()
    text = optional_inputs(module)  # a text backbone: lengths, index
    if text and accuracy_puzzles > 0:
        raise ConfigError("--accuracy decodes puzzles; for a text model compare decoding with `unmask eval --data` on "
                          "the model and on the export")

    extra: dict[str, torch.Tensor] | None = None
    if text:
        dynamic_seq = True  # text rows have any length up to the context
        config = resolved_task_config(task, config)
        feeds = text_parity_inputs(task.vocab_size, task.mask_id, task.seq_len, min(parity_rows, TEXT_PARITY_ROWS))
        tokens = feeds.pop("tokens") if parity else None
        extra = feeds if parity else None
        # example shapes: B, L and K distinct and > 1, or the exporter specialises them
        L0 = max(3, min(11, task.seq_len))
        example = torch.full((batch, L0), task.mask_id, dtype=torch.int64)
        ex_extra = {"lengths": torch.full((batch,), L0, dtype=torch.int64),
                    "index": torch.arange(L0 - 1, dtype=torch.int64).expand(batch, -1).clone()}
        graph: nn.Module = TextLogitsModule(copy.deepcopy(module).to(DTYPES[precision])).eval()
        proto = _export_graph(graph, example, opset=opset, dynamic_seq=True, extra=ex_extra, max_seq=task.seq_len)
    else:
        tokens = parity_inputs(task, parity_rows) if parity else None
        example = torch.full((batch, task.seq_len), task.mask_id, dtype=torch.int64)
        if tokens is not None:
            example = tokens[:batch].clone() if tokens.shape[0] >= batch else example
        graph = LogitsModule(copy.deepcopy(module).to(DTYPES[precision])).eval()
        proto = _export_graph(graph, example, opset=opset, dynamic_seq=dynamic_seq)
    meta = describe(config, precision=precision, quantize=quantize, dynamic_seq=dynamic_seq)
    if text:
        meta[K_INPUTS] = ",".join(text)
        files = dict(task.model_files())
        source = Path(str(config["backbone"].get("path") or "")) / "config.json"
        if files and config["backbone"].get("path") and source.is_file():
            # a Hugging Face directory's config.json: transformers picks the tokenizer class from its model_type
            # (a Qwen2 config loads Qwen2Tokenizer), so the tokenizer loads as it did beside the weights
            files["config.json"] = source.read_bytes()
        if files:
            meta[K_FILES] = encode_files(files)
    with tempfile.TemporaryDirectory(prefix="unmask-export-") as work:
        if quantize == "int8":
            proto = _quantize_int8(proto, Path(work))
        meta[K_PRECISION], meta[K_QUANT] = precision, quantize or "none"
        meta[K_CHECKSUM] = CHECKSUM_PLACEHOLDER  # filled in by seal_onnx once the bytes are final
        _set_metadata(proto, meta)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError
            raise CheckpointError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0][:300]}") from None
        if proto.ByteSize() >= 2**31:
            raise CheckpointError("the exported graph is over 2 GB, the protobuf limit of a single .onnx file; "
                                  "external-data export is not supported yet")
        data = seal_onnx(proto.SerializeToString())
    export_s = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.onnx")
    report: dict[str, Any] = {
        "path": str(out),
        "model": str(model_path),
        "precision": precision,
        "quantize": quantize,
        "opset": opset,
        "dynamic_seq": dynamic_seq,
        "inputs": [INPUT_NAME, *text],
        "task": meta["unmask.task"],
        "seq_len": int(meta["unmask.seq_len"]),
        "vocab_size": int(meta["unmask.vocab_size"]),
        "mask_id": int(meta["unmask.mask_id"]),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "export_seconds": round(export_s, 2),
        "parity": None,
    }
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        read_onnx_info(tmp)  # round trip of the metadata through a plain onnx.load
        if parity or accuracy_puzzles > 0:
            engine = open_engine(tmp, "onnxruntime", device=device)
            if parity:
                assert tokens is not None
                with torch.inference_mode():
                    more = extra or {}
                    reference = torch.cat([module(tokens[s : s + 64], **{k: v[s : s + 64] for k, v in more.items()})
                                           for s in range(0, tokens.shape[0], 64)]).float()
                report["parity"] = check_parity(
                    reference, engine, tokens, mask_id=task.mask_id, label=label,
                    what=f"onnxruntime {device} {label}", log=say, extra=extra,
                )
            if accuracy_puzzles > 0:
                report["accuracy"] = _accuracy(task, model_path, engine, accuracy_puzzles, say, label)
            del engine
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    shape = ", index (B, K) dynamic" if text else ""
    say(f"wrote {out} ({len(data) / 1e6:.2f} MB, {label}, opset {opset}, batch axis dynamic, "
        f"seq {'dynamic <= ' if dynamic_seq else ''}{report['seq_len']}{shape}) in {export_s:.1f}s")
    return report


def _accuracy(task: Any, model_path: str | os.PathLike, engine: Any, n: int, say: Callable[[str], Any],
              label: str) -> dict[str, Any]:
    """Solved rate of margin decoding (argmax values, no noise) with torch fp32 and with the exported engine."""
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.evaluate import evaluate
    from unmask.core.strategy import build_strategy

    data = task.generate("test", n, 0)
    ref = open_engine(model_path, "torch")
    out: dict[str, dict[str, Any]] = {}
    for name, eng in (("torch_fp32", ref), (f"onnxruntime_{label}", engine)):
        r = evaluate(eng, task, data, build_strategy("margin"), batch_size=min(n, 256), device=eng.device)
        out[name] = {"solved": r.solved, "cell_accuracy": r.cell_accuracy, "predictions": r.predictions}
    a, b = out["torch_fp32"], out[f"onnxruntime_{label}"]
    same = float((a.pop("predictions") == b.pop("predictions")).all(axis=1).mean())
    res = {"puzzles": n, "strategy": "margin", **out, "solved_change": b["solved"] - a["solved"], "same_output": same}
    say(f"accuracy on {n} test puzzles (margin): torch fp32 solved {100 * a['solved']:.1f}%, onnxruntime {label} "
        f"{100 * b['solved']:.1f}% (change {100 * res['solved_change']:+.1f} points; identical outputs "
        f"{100 * same:.1f}%)")
    return res
