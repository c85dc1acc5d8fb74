"""TensorRT: runs a serialized plan (``.plan`` + its ``.plan.json`` sidecar) on an NVIDIA GPU.

TensorRT 10/11 named-tensor API: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on a CUDA stream
of the engine's own (ordered after the caller's current stream, and the caller's stream after it), with
torch-allocated device buffers, so nothing crosses the host-device boundary inside the decode loop (host tokens are
copied up once per call). Batches larger than the plan's optimization profile are split into chunks of the
profile's max batch; chunks smaller than its min batch are padded (padding rows are dropped). Chunks that do not
start on a 256-byte boundary (TensorRT's requirement for tensor addresses) are copied into an aligned buffer.
Vocabulary, sequence length, mask id and config come from the sidecar, the batch limits from the plan itself.
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
        if ins != [self.info.input_name] or self.info.output_name not in outs:
            raise CheckpointError(
                f"plan '{path}' has inputs {ins} and outputs {outs}; expected input '{self.info.input_name}' and "
                f"output '{self.info.output_name}'"
            )
        self._in, self._out = self.info.input_name, self.info.output_name
        self._in_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self._in))
        self._out_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self._out))
        lo, _opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self._in, 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.config: dict[str, Any] = self.info.config
        self.vocab_size = self.info.vocab_size
        self.seq_len = self.info.seq_len
        self.mask_id = self.info.mask_id
        if int(hi[1]) != self.seq_len:
            raise CheckpointError(
                f"plan '{path}' takes sequences of {hi[1]} tokens but its sidecar says {self.seq_len}"
            )

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
            raise InputError(f"TensorRT plan takes tokens (B, {self.seq_len}), got shape {tuple(tokens.shape)}")
        if tokens.shape[0] == 0:
            raise InputError("TensorRT engine got an empty batch (0 rows); pass at least one row")
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            x = tokens.to(self.device, self._in_dtype, non_blocking=True).contiguous()  # (B, L), on the caller's stream
            # TensorRT on its own non-default stream (the legacy default stream makes enqueueV3 synchronise),
            # ordered after the caller's work and before the caller's next kernels.
            self._stream.wait_stream(caller)
            with torch.cuda.stream(self._stream):
                parts = self._run_chunks(x, self._stream.cuda_stream)
            caller.wait_stream(self._stream)
            x.record_stream(self._stream)  # x was made on the caller's stream and read on ours
            for part in parts:
                part.record_stream(caller)  # made on our stream, read on the caller's
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        return logits.float()  # (B, L, V)

    def _run_chunks(self, x: torch.Tensor, stream: int) -> list[torch.Tensor]:
        """Enqueue ``x`` (B, L) in chunks that fit the profile; the logits of each chunk, (n, L, V) each.

        Host-side logic only (buffers come from torch on ``x``'s device), so it runs on the CPU in tests with a fake
        execution context. Every call TensorRT answers with a bool is checked.
        """
        B, L = x.shape
        name = self.info.path
        parts = []
        for s in range(0, B, self.max_batch):
            chunk = x[s : s + self.max_batch]
            n = chunk.shape[0]
            if n < self.min_batch:  # pad up to the profile's minimum; the extra rows are dropped below
                chunk = torch.cat([chunk, chunk[:1].expand(self.min_batch - n, L)])
            chunk = aligned(chunk)  # a slice at row s starts s * L * 8 bytes in: not 256-aligned in general
            out = aligned(torch.empty((chunk.shape[0], L, self.vocab_size), dtype=self._out_dtype, device=x.device))
            if not self.context.set_input_shape(self._in, tuple(chunk.shape)):
                raise DeviceError(f"TensorRT refused input shape {tuple(chunk.shape)} for '{name}' (profile batch "
                                  f"{self.min_batch}..{self.max_batch}, seq {self.seq_len})")
            got = tuple(int(d) for d in self.context.get_tensor_shape(self._out))
            if got != tuple(out.shape):
                raise DeviceError(f"TensorRT plan '{name}' would write logits of shape {got} into a buffer of "
                                  f"{tuple(out.shape)}; the plan and its sidecar disagree, rebuild it")
            if not (self.context.set_tensor_address(self._in, chunk.data_ptr())
                    and self.context.set_tensor_address(self._out, out.data_ptr())):
                raise DeviceError(f"TensorRT refused the tensor addresses for '{name}' (need {ALIGN}-byte aligned "
                                  "device memory)")
            if not self.context.execute_async_v3(stream):
                raise DeviceError(f"TensorRT failed to run '{name}' on a batch of {chunk.shape[0]}")
            parts.append(out[:n])
        return parts


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
