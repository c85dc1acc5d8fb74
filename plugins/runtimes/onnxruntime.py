"""ONNX Runtime: runs an exported ``.onnx`` file on the CPU, or on a GPU through the CUDA or TensorRT provider.

The file describes itself (``unmask.export.metadata``): vocabulary size, sequence length, mask id and the resolved
config come from its metadata, never from flags. GPU providers are checked after the session is made, because
onnxruntime silently falls back to the CPU when a provider cannot load (a CPU-only wheel, a missing CUDA library):
asking for ``cuda`` and getting the CPU is an error here, never a quiet slowdown.

GPU path: IO binding, so nothing crosses the host-device boundary inside the decode loop. Tokens already on the GPU
are bound where they are; tokens on the host are copied once into a reused device buffer. Logits are written by
onnxruntime straight into a tensor from torch's caching allocator (no cudaMalloc after warm-up, no host copy) that
the caller owns - a single reused output buffer would be overwritten by the next call while the caller still holds
the previous logits. onnxruntime runs on a CUDA stream of the engine's own (``user_compute_stream``; torch's default
stream has handle 0, which onnxruntime reads as "no user stream" and would then run unordered on a stream of its
own), ordered both ways with the caller's stream (``wait_stream`` / ``record_stream``), as the TensorRT runtime does.
TF32 is off (``use_tf32 = 0``): fp32 artifacts must match their fp32 parity tolerance (fp16 ones never use TF32).
With the TensorRT provider the optimization profile spans ``trt_min_batch`` .. ``trt_max_batch`` (tuned for
``trt_opt_batch``), so TensorRT builds one engine instead of one per batch size, and batches are split to fit it.

Text models (exported with ``lengths`` and ``index`` inputs, :mod:`unmask.export.onnx`) list them in ``inputs``
(the engine contract): ``engine(tokens, lengths=..., index=...)`` returns (B, K, V) logits at ``index``; a call
without ``index`` gets every position (index = 0..L-1), one without ``lengths`` rows of full width. The file's
tokenizer is written out once and the task pointed at it (:func:`unmask.export.metadata.bind_model_files`).

onnxruntime comes from one of two exclusive extras: ``pip install unmask[cpu]`` (onnxruntime) or ``unmask[gpu]``
(onnxruntime-gpu); both provide the same module, and only one may be installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import torch

from unmask.core.config import Section
from unmask.core.errors import CheckpointError, DeviceError
from unmask.core.registry import runtimes

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


# Rows per session run on a CPU. The default Sudoku model, one thread, Intel Xeon with AMX, ms per row of a 256-row
# batch run whole / in slices of 64, 32, 16: fp32 7.85 / 5.69 / 4.95 / 4.09; int8 7.03 / 5.54 / 4.89 / 4.40
# (another job on the other core)
CPU_MICRO_BATCH = 16


class OnnxRuntimeOptions(Section):
    device: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    """Execution provider: cpu, cuda (CUDAExecutionProvider) or tensorrt (TensorrtExecutionProvider, CUDA fallback)."""
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Intra-op CPU threads (0 = onnxruntime's default, one per physical core)."""
    device_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    micro_batch: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """CPU: rows per session run; a bigger batch runs in slices of this many, which stay in cache (0 = whole batch;
    default CPU_MICRO_BATCH). Same logits either way. GPU providers always take the whole batch."""
    trt_cache_dir: str = ""
    """TensorRT provider: cache built engines here (the first build of a model takes minutes)."""
    trt_min_batch: Annotated[int, msgspec.Meta(ge=1)] = 1
    """TensorRT provider: smallest batch of the optimization profile."""
    trt_opt_batch: Annotated[int, msgspec.Meta(ge=1)] = 64
    """TensorRT provider: batch the profile is tuned for (clamped to min..max)."""
    trt_max_batch: Annotated[int, msgspec.Meta(ge=1)] = 256
    """TensorRT provider: largest batch of the profile; bigger batches are split."""
    trt_max_seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    """TensorRT provider, text models: longest row of the profile (0 = min(the model's context, 2048))."""
    model: list[str] = msgspec.field(default_factory=list)
    """``task.key=value`` settings of the exported model's task (e.g. ``task.gen_length=64``, ``task.chat=true``);
    backbone settings are part of the exported graph and cannot change."""


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line error saying which extra to install."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DeviceError(
            "onnxruntime is not installed; pip install .[cpu] (CPU) or .[gpu] (onnxruntime-gpu, CUDA "
            "and TensorRT providers) - only one of the two may be installed"
        ) from None
    return ort


def trt_profile_options(options: OnnxRuntimeOptions, input_name: str, seq_len: int,
                        text: bool = False) -> dict[str, str]:
    """TensorRT provider options for an optimization profile over the batch axis (``name:BxL`` shapes); a ``text``
    model's profile also spans the row length (1 .. ``trt_max_seq``) and the index width K (1 .. the row length),
    tuned for the shapes :func:`unmask.export.tensorrt.text_profile` picks."""
    lo, hi = options.trt_min_batch, options.trt_max_batch
    if lo > hi:
        from unmask.core.errors import ConfigError

        raise ConfigError(f"trt_min_batch ({lo}) must be <= trt_max_batch ({hi})")
    opt = min(max(options.trt_opt_batch, lo), hi)
    if text:
        from unmask.export.tensorrt import text_profile

        seq, k = text_profile(seq_len, max_seq=options.trt_max_seq or None)
        shapes = {which: (b, seq[i], k[i]) for i, (which, b) in enumerate((("min", lo), ("opt", opt), ("max", hi)))}
        return {f"trt_profile_{which}_shapes": f"{input_name}:{b}x{n},lengths:{b},index:{b}x{m}"
                for which, (b, n, m) in shapes.items()}
    return {"trt_profile_min_shapes": f"{input_name}:{lo}x{seq_len}",
            "trt_profile_opt_shapes": f"{input_name}:{opt}x{seq_len}",
            "trt_profile_max_shapes": f"{input_name}:{hi}x{seq_len}"}


def _missing_gpu_parts(device: str) -> list[str]:
    ort = require_onnxruntime()

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"a CUDA GPU (torch {torch.__version__} sees none)")
    want = PROVIDERS[device]
    if want not in ort.get_available_providers():
        missing.append(
            f"onnxruntime's {want} (installed onnxruntime {ort.__version__} offers "
            f"{', '.join(p.replace('ExecutionProvider', '') for p in ort.get_available_providers())}; "
            "on a GPU machine: pip uninstall -y onnxruntime && pip install .[gpu])"
        )
    return missing


def _session(path: Path, options: OnnxRuntimeOptions, stream: int = 0, profile: dict[str, str] | None = None) -> Any:
    """An InferenceSession; on GPU, running on the CUDA stream with handle ``stream`` (never 0: see the module doc)."""
    ort = require_onnxruntime()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if options.threads:
        so.intra_op_num_threads = options.threads
    so.log_severity_level = 3  # errors only; provider fall-back is detected below, not by reading logs
    providers: list[Any] = []
    if options.device != "cpu":
        assert stream != 0, "onnxruntime treats stream handle 0 as no user stream"
        cuda_opts = {"device_id": str(options.device_id), "use_tf32": "0"}
        cuda_opts.update({"has_user_compute_stream": "1", "user_compute_stream": str(stream)})
        if options.device == "tensorrt":
            trt_opts = {"device_id": str(options.device_id), "has_user_compute_stream": "1",
                        "user_compute_stream": str(stream), **(profile or {})}
            if options.trt_cache_dir:
                trt_opts.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": options.trt_cache_dir})
            providers.append(("TensorrtExecutionProvider", trt_opts))
        providers.append(("CUDAExecutionProvider", cuda_opts))
    providers.append("CPUExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - InvalidProtobuf, Fail, NotImplemented...: the file cannot run here
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        if options.device == "cpu" and "NOT_IMPLEMENTED" in first:
            raise DeviceError(
                f"onnxruntime on the CPU cannot run '{path}' ({first[:200]}); bf16 models need --device cuda or "
                "tensorrt, export with --precision fp32 (optionally --quantize int8) for the CPU"
            ) from None
        if "NOT_IMPLEMENTED" in first:  # a valid file with an op/dtype this provider lacks (e.g. some bf16 kernels)
            raise DeviceError(
                f"onnxruntime's {PROVIDERS[options.device]} has no kernel for an operator of '{path}' "
                f"({first[:200]}); this is a missing kernel, not a damaged file: export with --precision fp16 or "
                "fp32, or run the model with --runtime tensorrt"
            ) from None
        raise CheckpointError(
            f"onnxruntime cannot load '{path}' ({first[:300]}); the file is corrupt or not a model"
        ) from None


class OnnxRuntimeEngine:
    """tokens (B, L) int64 -> logits (B, L, V) float32 on the engine's device, from an exported ONNX file."""

    def __init__(self, path: Path, options: OnnxRuntimeOptions) -> None:
        from unmask.export.metadata import read_onnx_info

        self._torch_stream: torch.cuda.Stream | None = None
        profile = None
        if options.device != "cpu":
            missing = _missing_gpu_parts(options.device)
            if missing:
                raise DeviceError(f"--runtime onnxruntime --device {options.device} needs {' and '.join(missing)}")
            self._torch_stream = torch.cuda.Stream(torch.device("cuda", options.device_id))
        else:
            require_onnxruntime()
        # the file's SHA-256 and its unmask metadata are checked before onnxruntime parses it: a damaged file is one
        # line, never onnxruntime's own failure on it (an undecodable metadata string, a crash in its parser)
        self.info = read_onnx_info(path)
        if options.device == "tensorrt":  # the profile needs the input name and length before the session
            profile = trt_profile_options(options, self.info.input_name, self.info.seq_len, bool(self.info.inputs))
        stream = self._torch_stream.cuda_stream if self._torch_stream is not None else 0
        self.session = _session(path, options, stream, profile)
        want = PROVIDERS[options.device]
        got = self.session.get_providers()
        if want not in got:
            raise DeviceError(
                f"onnxruntime did not load {want} for '{path}' (providers loaded: {', '.join(got)}); "
                "check the CUDA/cuDNN (and TensorRT) libraries onnxruntime-gpu needs, or use --device cpu"
            )
        self.options = options
        self.providers = got
        from unmask.export.metadata import bind_model_files

        bind_model_files(self.info)  # a text model's tokenizer, written out and named in the task section
        _apply_task_settings(self.info, options.model)
        self.inputs: tuple[str, ...] = self.info.inputs  # the engine contract's optional inputs (lengths, index)
        self.config: dict[str, Any] = self.info.config
        self.vocab_size = self.info.vocab_size
        self.seq_len = self.info.seq_len
        self.mask_id = self.info.mask_id
        # dynamic batch axis: any batch runs in one call, except with the TensorRT provider (its profile's max)
        self.max_batch: int | None = options.trt_max_batch if options.device == "tensorrt" else None
        self._max_seq = self.seq_len
        if options.device == "tensorrt" and self.inputs:
            from unmask.export.tensorrt import text_profile

            self._max_seq = text_profile(self.seq_len, max_seq=options.trt_max_seq or None)[0][2]
        self.device = torch.device("cpu") if options.device == "cpu" else torch.device("cuda", options.device_id)
        self._check_io()
        self._in_buf: torch.Tensor | None = None  # reused device buffer for host-side tokens (GPU path)
        self._binding = self.session.io_binding() if self.device.type == "cuda" else None
        micro = options.micro_batch
        self.micro_batch = (CPU_MICRO_BATCH if micro is None else micro) if self.device.type == "cpu" else 0

    def _check_io(self) -> None:
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        names_in, names_out = [i.name for i in ins], [o.name for o in outs]
        want_in = [self.info.input_name, *self.inputs]
        if names_in != want_in or self.info.output_name not in names_out:
            raise CheckpointError(
                f"'{self.info.path}' has inputs {names_in} and outputs {names_out}; expected inputs {want_in} (int64) "
                f"and output '{self.info.output_name}'"
            )
        for i in ins:
            if i.type != "tensor(int64)":
                raise CheckpointError(f"'{self.info.path}' input '{i.name}' is {i.type}, expected tensor(int64)")
        out = outs[names_out.index(self.info.output_name)]
        v = out.shape[-1] if out.shape else None
        if isinstance(v, int) and v != self.vocab_size:
            raise CheckpointError(
                f"'{self.info.path}' outputs {v} logits per position but its metadata says vocab {self.vocab_size}"
            )
        dtypes = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
        if out.type not in dtypes:
            raise CheckpointError(f"'{self.info.path}' output '{out.name}' is {out.type}; expected float32 or float16")
        self._out_dtype = dtypes[out.type]

    def _feeds(self, tokens: torch.Tensor, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's inputs by name: checked, with a text model's missing lengths/index made (export.inputs)."""
        from unmask.export.inputs import engine_feeds

        # the longest row: the model's context, or the TensorRT provider's profile (trt_max_seq)
        feeds = engine_feeds(tokens, extra, inputs=self.inputs, seq_len=self._max_seq,
                             dynamic_seq=self.info.dynamic_seq, path=self.info.path, what="onnxruntime engine")
        return {(self.info.input_name if k == "tokens" else k): v for k, v in feeds.items()}

    def __call__(self, tokens: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        feeds = self._feeds(tokens, extra)
        if self._binding is None:
            x = {k: v.detach().to("cpu", torch.int64).contiguous().numpy() for k, v in feeds.items()}
            n, B = self.micro_batch, tokens.shape[0]
            run, name = self.session.run, self.info.output_name
            if 0 < n < B:
                out = np.concatenate([run([name], {k: v[s : s + n] for k, v in x.items()})[0] for s in range(0, B, n)])
            else:
                out = run([name], x)[0]
            return torch.from_numpy(out).float()  # (B, L|K, V), no copy for float32
        return self._run_cuda(feeds)

    def _run_cuda(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        from unmask.export.inputs import out_width

        tokens = feeds[self.info.input_name]
        B, L = tokens.shape
        if self.max_batch is not None and B > self.max_batch:  # the TensorRT provider's profile
            return torch.cat([self._run_cuda({k: v[s : s + self.max_batch] for k, v in feeds.items()})
                              for s in range(0, B, self.max_batch)])
        W = out_width(feeds)  # K positions with an index, else L
        caller = torch.cuda.current_stream(self.device)
        ours = self._torch_stream
        assert ours is not None
        ours.wait_stream(caller)  # the caller's writes (tokens) land before onnxruntime reads them
        with torch.cuda.stream(ours):
            bound: dict[str, torch.Tensor] = {}
            for name, t in feeds.items():
                if t.device == self.device and t.dtype == torch.int64 and t.is_contiguous():
                    t.record_stream(ours)  # the caller's tensor, read on our stream
                    bound[name] = t
                elif name == self.info.input_name:  # host (or other-GPU) tokens: one copy into a reused buffer
                    if self._in_buf is None or self._in_buf.numel() < B * L:
                        self._in_buf = torch.empty(B * L, dtype=torch.int64, device=self.device)
                    x = self._in_buf[: B * L].view(B, L)
                    x.copy_(t, non_blocking=True)
                    bound[name] = x
                else:  # lengths / index: small, copied on our stream
                    bound[name] = t.to(self.device, torch.int64, non_blocking=True).contiguous()
            out = torch.empty((B, W, self.vocab_size), dtype=self._out_dtype, device=self.device)  # (B, L|K, V)
            b = self._binding
            assert b is not None  # set for CUDA sessions, and this is the CUDA path
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            for name, t in bound.items():
                b.bind_input(name=name, device_type="cuda", device_id=self.device.index or 0,
                             element_type=np.int64, shape=tuple(t.shape), buffer_ptr=t.data_ptr())
            b.bind_output(name=self.info.output_name, device_type="cuda", device_id=self.device.index or 0,
                          element_type=_np_dtype(self._out_dtype), shape=(B, W, self.vocab_size),
                          buffer_ptr=out.data_ptr())
            self.session.run_with_iobinding(b)
        caller.wait_stream(ours)  # the caller's next kernels see the logits
        out.record_stream(caller)  # made on our stream, used on the caller's
        return out.float()


def _apply_task_settings(info: Any, settings: list[str]) -> None:
    """``task.key=value`` settings applied to the artifact's config (the ``model`` option); anything else is an
    error: the backbone is baked into the exported graph."""
    if not settings:
        return
    from unmask.core.config import apply_overrides
    from unmask.core.errors import ConfigError

    for item in settings:
        if not item.strip().startswith("task."):
            raise ConfigError(f"'{item}' does not apply to the exported model '{info.path}': only task settings "
                              "(task.key=value) can change; the backbone's are part of the graph (re-export it)")
    new = apply_overrides(info.config, settings)
    from unmask.core.task import build_task

    build_task(new["task"], "model task")  # unknown keys and wrong types: one line naming the key
    info.config.clear()
    info.config.update(new)


def _np_dtype(dt: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float16: np.float16}[dt]


@runtimes.register("onnxruntime")
class OnnxRuntimeRuntime:
    """ONNX Runtime on CPU, CUDA or its TensorRT provider (exported .onnx files; GPU providers are verified)."""

    Options = OnnxRuntimeOptions
    name = "onnxruntime"
    suffixes = (".onnx",)
    default_for = (".onnx",)

    @staticmethod
    def open(path: Path, options: OnnxRuntimeOptions) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(Path(path), options)
