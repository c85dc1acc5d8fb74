"""TensorRT: runs a serialized plan (``.plan`` + its ``.plan.json`` sidecar) on an NVIDIA GPU.

TensorRT 10/11 named-tensor API: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on a CUDA stream
of the engine's own (ordered after the caller's current stream, and the caller's stream after it), with
torch-allocated device buffers, so nothing crosses the host-device boundary inside the decode loop (host tokens are
copied up once per call). Batches larger than the plan's optimization profile are split into chunks of the
profile's max batch; chunks smaller than its min batch are padded (padding rows are dropped). Chunks that do not
start on a 256-byte boundary (TensorRT's requirement for tensor addresses) are copied into an aligned buffer.
Vocabulary, sequence length, mask id and config come from the sidecar, the batch limits from the plan itself.

Text plans (built from a text export: ``tokens`` (B, L), ``lengths`` (B,), ``index`` (B, K) -> logits (B, K, V))
list ``lengths`` and ``index`` in ``inputs`` (the engine contract). Their profile spans B, L and K: rows longer than
the profile's L are an error (rebuild with a larger ``--max-seq``); an index wider than its K is run in column
chunks (one forward each); a chunk narrower than its minimum K repeats its first column (dropped afterwards). The
embedded tokenizer is written out and the task pointed at it, as for ONNX files.

None of this has run on a GPU with TensorRT: the host-side logic (profile checks, chunking, padding, tensor
binding) is tested on the CPU with a fake execution context (tests/export/test_gpu_logic.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
import torch

from unmask.core.config import Section
from unmask.core.errors import CheckpointError, DeviceError, InputError
from unmask.core.registry import runtimes


class TensorRTOptions(Section):
    device_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    device: str = "cuda"
    """Only ``cuda``: TensorRT has no CPU path (accepted so ``--device cuda`` works on every runtime)."""


class TensorRTEngine:
    """tokens (B, L) int64 -> logits (B, L, V) float32 on the GPU, from a TensorRT plan."""

    def __init__(self, path: Path, options: TensorRTOptions) -> None:
        from unmask.export.metadata import read_plan_info
        from unmask.export.tensorrt import require_tensorrt, torch_dtype

        if options.device != "cuda":
            raise DeviceError(f"--runtime tensorrt runs only on a CUDA GPU, not --device {options.device}")
        trt = require_tensorrt("--runtime tensorrt")
        self.info = read_plan_info(path)
        if options.device_id >= torch.cuda.device_count():
            raise DeviceError(f"no CUDA device {options.device_id}; this machine has {torch.cuda.device_count()}")
        self.device = torch.device("cuda", options.device_id)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                b = self.info.extra.get("build", {})
                raise CheckpointError(
                    f"TensorRT {getattr(trt, '__version__', '?')} on {torch.cuda.get_device_name(self.device)} cannot "
                    f"load '{path}' (built with TensorRT {b.get('tensorrt', '?')} for {b.get('gpu', '?')}); plans "
                    "only run where they were built: rebuild it here with `unmask export --trt`"
                )
            self.context = self.engine.create_execution_context()
            self._stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        want = [self.info.input_name, *self.info.inputs]
        if ins != want or self.info.output_name not in outs:
            raise CheckpointError(
                f"plan '{path}' has inputs {ins} and outputs {outs}; expected inputs {want} and "
                f"output '{self.info.output_name}'"
            )
        self._in, self._out = self.info.input_name, self.info.output_name
        self._in_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self._in))
        self._out_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self._out))
        from unmask.export.metadata import bind_model_files

        bind_model_files(self.info)  # a text plan's tokenizer, written out and named in the task section
        self.inputs: tuple[str, ...] = self.info.inputs
        self.config: dict[str, Any] = self.info.config
        self.vocab_size = self.info.vocab_size
        self.seq_len = self.info.seq_len
        self.mask_id = self.info.mask_id
        self._set_profile({n: tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(n, 0))
                           for n in want})

    def _set_profile(self, shapes: dict[str, tuple[tuple[int, ...], ...]]) -> None:
        """Batch, row-length and index-width limits from the plan's profile 0 ((min, opt, max) shapes per input)."""
        lo, _opt, hi = shapes[self._in]
        self.min_batch, self.max_batch = lo[0], hi[0]
        self.min_seq, self.max_seq = lo[1], hi[1]
        self.min_k, self.max_k = 0, 0
        if "index" in shapes:
            self.min_k, self.max_k = shapes["index"][0][1], shapes["index"][2][1]
        if not self.inputs and self.max_seq != self.seq_len:
            raise CheckpointError(
                f"plan '{self.info.path}' takes sequences of {self.max_seq} tokens but its sidecar says {self.seq_len}"
            )
        if self.inputs and not (self.min_seq <= self.max_seq <= self.seq_len and 1 <= self.min_k <= self.max_k):
            raise CheckpointError(f"plan '{self.info.path}' has a profile (rows {self.min_seq}..{self.max_seq}, index "
                                  f"{self.min_k}..{self.max_k}) its sidecar's context {self.seq_len} cannot hold; "
                                  "rebuild it")

    def _feeds(self, tokens: torch.Tensor, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checked inputs (export.inputs: a text plan's missing lengths/index are made), rows within the profile."""
        from unmask.export.inputs import engine_feeds

        inputs = getattr(self, "inputs", ())
        if not inputs and isinstance(tokens, torch.Tensor) and (tokens.ndim != 2 or tokens.shape[1] != self.seq_len):
            raise InputError(f"TensorRT plan takes tokens (B, {self.seq_len}), got shape {tuple(tokens.shape)}")
        feeds = engine_feeds(tokens, extra, inputs=inputs, seq_len=self.seq_len, dynamic_seq=bool(inputs),
                             path=self.info.path, what="TensorRT engine")
        if tokens.shape[0] == 0:
            raise InputError("TensorRT engine got an empty batch (0 rows); pass at least one row")
        L = tokens.shape[1]
        if inputs and not self.min_seq <= L <= self.max_seq:
            raise InputError(f"TensorRT plan '{self.info.path}' was built for rows of {self.min_seq}..{self.max_seq} "
                             f"tokens, got {L}; rebuild it with `unmask export --trt ... --max-seq {L}` or more")
        return feeds

    def __call__(self, tokens: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        feeds = self._feeds(tokens, extra)
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            # on the caller's stream: (B, L) tokens in the plan's dtype, (B,) lengths, (B, K) index
            x = feeds["tokens"].to(self.device, self._in_dtype, non_blocking=True).contiguous()
            more = {k: v.to(self.device, torch.int64, non_blocking=True).contiguous() for k, v in feeds.items()
                    if k != "tokens"}
            # TensorRT on its own non-default stream (the legacy default stream makes enqueueV3 synchronise),
            # ordered after the caller's work and before the caller's next kernels.
            self._stream.wait_stream(caller)
            with torch.cuda.stream(self._stream):
                parts = self._run_chunks(x, self._stream.cuda_stream, **more)
            caller.wait_stream(self._stream)
            for t in (x, *more.values()):
                t.record_stream(self._stream)  # made on the caller's stream and read on ours
            for part in parts:
                part.record_stream(caller)  # made on our stream, read on the caller's
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        return logits.float()  # (B, L, V), or (B, K, V) at an index

    def _run_chunks(self, x: torch.Tensor, stream: int, lengths: torch.Tensor | None = None,
                    index: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Enqueue ``x`` (B, L) in chunks that fit the profile; the logits of each row chunk, (n, L, V) each, or
        (n, K, V) with a text plan's ``lengths`` (B,) and ``index`` (B, K) (wide indexes in column chunks).

        Host-side logic only (buffers come from torch on ``x``'s device), so it runs on the CPU in tests with a fake
        execution context. Every call TensorRT answers with a bool is checked.
        """
        B, L = x.shape
        parts = []
        for s in range(0, B, self.max_batch):
            rows = {"tokens": x[s : s + self.max_batch]}
            if lengths is not None and index is not None:
                rows.update(lengths=lengths[s : s + self.max_batch], index=index[s : s + self.max_batch])
            n = rows["tokens"].shape[0]
            if n < self.min_batch:  # pad up to the profile's minimum with copies of the first row; dropped below
                rows = {k: torch.cat([v, v[:1].expand(self.min_batch - n, *v.shape[1:])]) for k, v in rows.items()}
            if "index" not in rows:
                parts.append(self._enqueue(rows, stream)[:n])
                continue
            idx, cols = rows["index"], []
            for c in range(0, idx.shape[1], self.max_k):  # an index wider than the profile: one forward per chunk
                piece = idx[:, c : c + self.max_k]
                w = piece.shape[1]
                if w < self.min_k:  # narrower than the profile's minimum: repeat the first column, dropped below
                    piece = torch.cat([piece, piece[:, :1].expand(-1, self.min_k - w)], dim=1)
                cols.append(self._enqueue({**rows, "index": piece}, stream)[:, :w])
            parts.append((cols[0] if len(cols) == 1 else torch.cat(cols, dim=1))[:n])
        return parts

    def _enqueue(self, feeds: dict[str, torch.Tensor], stream: int) -> torch.Tensor:
        """One ``execute_async_v3`` on ``feeds`` (tokens and, for text plans, lengths and index): shapes set and
        checked against the output buffer, 256-byte-aligned addresses bound. Returns the logits buffer."""
        name = self.info.path
        feeds = {k: aligned(v) for k, v in feeds.items()}  # a slice at row s starts s * L * 8 bytes in: unaligned
        x = feeds["tokens"]
        width = feeds["index"].shape[1] if "index" in feeds else x.shape[1]
        out = aligned(torch.empty((x.shape[0], width, self.vocab_size), dtype=self._out_dtype, device=x.device))
        for key, t in feeds.items():
            tensor = self._in if key == "tokens" else key
            if not self.context.set_input_shape(tensor, tuple(t.shape)):
                limits = (f"batch {self.min_batch}..{self.max_batch}, seq "
                          + (f"{self.min_seq}..{self.max_seq}, index {self.min_k}..{self.max_k}"
                             if "index" in feeds else f"{self.seq_len}"))
                raise DeviceError(f"TensorRT refused input shape {tuple(t.shape)} of '{tensor}' for '{name}' "
                                  f"(profile {limits})")
        got = tuple(int(d) for d in self.context.get_tensor_shape(self._out))
        if got != tuple(out.shape):
            raise DeviceError(f"TensorRT plan '{name}' would write logits of shape {got} into a buffer of "
                              f"{tuple(out.shape)}; the plan and its sidecar disagree, rebuild it")
        ok = all(self.context.set_tensor_address(self._in if k == "tokens" else k, t.data_ptr())
                 for k, t in feeds.items())
        if not (ok and self.context.set_tensor_address(self._out, out.data_ptr())):
            raise DeviceError(f"TensorRT refused the tensor addresses for '{name}' (need {ALIGN}-byte aligned "
                              "device memory)")
        if not self.context.execute_async_v3(stream):
            raise DeviceError(f"TensorRT failed to run '{name}' on a batch of {x.shape[0]}")
        return out


ALIGN = 256
"""Bytes: IExecutionContext::setTensorAddress needs 256-byte-aligned pointers (NvInferRuntime.h)."""


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if it is contiguous and starts on an ``ALIGN``-byte boundary, else a copy that does."""
    if t.is_contiguous() and t.data_ptr() % ALIGN == 0:
        return t
    pad = ALIGN // t.element_size()
    buf = torch.empty(t.numel() + pad, dtype=t.dtype, device=t.device)
    off = (-buf.data_ptr() % ALIGN) // t.element_size()
    out = buf[off : off + t.numel()].view(t.shape)
    out.copy_(t)
    return out


@runtimes.register("tensorrt")
class TensorRTRuntime:
    """TensorRT 10/11 plans on an NVIDIA GPU (.plan + .plan.json sidecar; batches split to fit the profile)."""

    Options = TensorRTOptions
    name = "tensorrt"
    suffixes = (".plan",)
    default_for = (".plan",)

    @staticmethod
    def open(path: Path, options: TensorRTOptions) -> TensorRTEngine:
        return TensorRTEngine(Path(path), options)
