"""The GPU code's host-side logic, run on the CPU with fake TensorRT contexts and onnxruntime sessions (issue 16, 8).

The real GPU paths are in test_gpu.py (``-m gpu`` / ``-m tensorrt``); these check what can be checked without one.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unmask.core.errors import ConfigError, DeviceError, InputError


def test_opt_batch_defaults_to_fit_max_batch():
    from unmask.export.tensorrt import resolve_profile

    assert resolve_profile(1, None, 16, 1.0) == (1, 16, 16)  # was opt 64 > max 16: refused
    assert resolve_profile(1, None, 256, 1.0) == (1, 64, 256)
    assert resolve_profile(32, None, 48, 1.0) == (32, 48, 48)
    with pytest.raises(ConfigError, match="--opt-batch"):
        resolve_profile(1, 64, 16, 1.0)


def test_export_cli_opt_batch_default_is_none():
    import argparse

    from unmask.export.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--max-batch", "16"]).opt_batch is None


class FakeContext:
    """Records what the engine asks of TensorRT; checks alignment like setTensorAddress; copies the input it is given
    (read back from the raw address) so the test can tell which rows each call got."""

    def __init__(self, vocab: int, *, refuse: str = "", wrong_shape: bool = False) -> None:
        self.vocab, self.refuse, self.wrong_shape = vocab, refuse, wrong_shape
        self.shape: tuple[int, int] | None = None
        self.addr: dict[str, int] = {}
        self.seen: list[torch.Tensor] = []

    def set_input_shape(self, name: str, shape: tuple[int, int]) -> bool:
        self.shape = shape
        return self.refuse != "shape"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        B, L = self.shape  # type: ignore[misc]
        return (B, L, self.vocab + (1 if self.wrong_shape else 0))

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if ptr % 256:
            return False  # TensorRT rejects unaligned addresses
        self.addr[name] = ptr
        return self.refuse != "address"

    def execute_async_v3(self, stream: int) -> bool:
        B, L = self.shape  # type: ignore[misc]
        buf = (ctypes.c_int64 * (B * L)).from_address(self.addr["tokens"])
        self.seen.append(torch.frombuffer(bytearray(buf), dtype=torch.int64).view(B, L).clone())
        return self.refuse != "execute"


def fake_engine(context: FakeContext, *, min_batch: int = 2, max_batch: int = 3, L: int = 5):
    from unmask.plugins.runtimes.tensorrt import TensorRTEngine

    eng = TensorRTEngine.__new__(TensorRTEngine)
    eng.context, eng.min_batch, eng.max_batch = context, min_batch, max_batch
    eng.seq_len, eng.vocab_size, eng._in, eng._out = L, context.vocab, "tokens", "logits"
    eng._out_dtype = torch.float32
    eng.info = SimpleNamespace(path=Path("m.plan"))
    return eng


def test_tensorrt_chunks_are_aligned_padded_and_checked():
    ctx = FakeContext(vocab=7)
    eng = fake_engine(ctx)
    x = torch.arange(7 * 5, dtype=torch.int64).view(7, 5)  # rows 3.. start 120 bytes in: unaligned slices
    parts = eng._run_chunks(x, stream=1)
    assert [tuple(p.shape) for p in parts] == [(3, 5, 7), (3, 5, 7), (1, 5, 7)]
    assert all(p.data_ptr() % 256 == 0 for p in parts)
    assert torch.equal(ctx.seen[0], x[0:3]) and torch.equal(ctx.seen[1], x[3:6])
    assert torch.equal(ctx.seen[2], torch.cat([x[6:7], x[6:7]]))  # padded to the profile's min batch 2
    for refuse, msg in [("shape", "refused input shape"), ("address", "refused the tensor addresses"),
                        ("execute", "failed to run")]:
        with pytest.raises(DeviceError, match=msg):
            fake_engine(FakeContext(7, refuse=refuse))._run_chunks(x, stream=1)
    with pytest.raises(DeviceError, match=r"would write logits of shape \(3, 5, 8\) into a buffer of \(3, 5, 7\)"):
        fake_engine(FakeContext(7, wrong_shape=True))._run_chunks(x, stream=1)


def test_tensorrt_empty_batch_is_an_error():
    eng = fake_engine(FakeContext(7))
    with pytest.raises(InputError, match="empty batch"):
        eng(torch.zeros((0, 5), dtype=torch.int64))


def test_aligned_copies_only_when_needed():
    from unmask.plugins.runtimes.tensorrt import aligned

    base = aligned(torch.arange(64, dtype=torch.int64))
    assert aligned(base) is base
    sl = base[3:11]
    a = aligned(sl)
    assert a.data_ptr() % 256 == 0 and torch.equal(a, sl)


class FakeSession:
    made: list[dict] = []

    def __init__(self, path, sess_options=None, providers=None):  # noqa: ANN001
        FakeSession.made.append({"providers": providers})
        if "bf16" in str(path):
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for MatMul")


def test_onnxruntime_gpu_session_options(monkeypatch):
    import onnxruntime as ort

    from unmask.plugins.runtimes.onnxruntime import OnnxRuntimeOptions, _session, trt_profile_options

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    opts = OnnxRuntimeOptions(device="tensorrt", trt_min_batch=1, trt_opt_batch=64, trt_max_batch=16)
    profile = trt_profile_options(opts, "tokens", 81)
    assert profile == {"trt_profile_min_shapes": "tokens:1x81", "trt_profile_opt_shapes": "tokens:16x81",
                       "trt_profile_max_shapes": "tokens:16x81"}
    _session(Path("m.onnx"), opts, stream=12345, profile=profile)
    trt, cuda, cpu = FakeSession.made[-1]["providers"]
    assert trt[0] == "TensorrtExecutionProvider" and trt[1]["user_compute_stream"] == "12345"
    assert trt[1]["trt_profile_max_shapes"] == "tokens:16x81"
    assert cuda == ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0", "has_user_compute_stream": "1",
                                              "user_compute_stream": "12345"})
    with pytest.raises(AssertionError):  # handle 0 would mean "no user stream" to onnxruntime
        _session(Path("m.onnx"), OnnxRuntimeOptions(device="cuda"), stream=0)
    with pytest.raises(DeviceError, match="no kernel for an operator .* not a damaged file"):
        _session(Path("m-bf16.onnx"), OnnxRuntimeOptions(device="cuda"), stream=7)
    with pytest.raises(ConfigError, match="trt_min_batch"):
        trt_profile_options(OnnxRuntimeOptions(device="tensorrt", trt_min_batch=8, trt_max_batch=4), "tokens", 81)


def test_missing_onnxruntime_names_the_extras(monkeypatch, tiny_onnx):
    from unmask.core.decoding.runtime import open_engine

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(DeviceError, match=r"onnxruntime is not installed; pip install \.\[cpu\] \(CPU\) or \.\[gpu\]"):
        open_engine(tiny_onnx[0], "onnxruntime")


def test_cli_flags_a_runtime_does_not_take_are_named_as_typed(tiny_onnx, capsys):
    from unmask.core.cli import main

    code = main(["eval", "--model", str(tiny_onnx[0]), "--generate", "2", "--bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --bf16 does not apply to runtime 'onnxruntime'" in err
    assert "runtime onnxruntime.bf16" not in err
    code = main(["eval", "--model", str(tiny_onnx[0]), "--generate", "2", "--compile"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --compile does not apply to runtime 'onnxruntime'" in err
    assert "compile the graph themselves" in err


def test_fp32_parity_runs_without_tf32():
    from unmask.export.parity import check_parity

    seen = []

    class Engine:
        device = torch.device("cpu")

        def __call__(self, tokens):  # noqa: ANN001, ANN204
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return torch.zeros(*tokens.shape, 3)

    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tokens = torch.zeros(4, 5, dtype=torch.int64)
        check_parity(torch.zeros(4, 5, 3), Engine(), tokens, mask_id=2, label="fp32", what="t", log=None)
        check_parity(torch.zeros(4, 5, 3), Engine(), tokens, mask_id=2, label="fp16", what="t", log=None)
        assert seen == [False, True] and torch.backends.cuda.matmul.allow_tf32 is True  # restored afterwards
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
