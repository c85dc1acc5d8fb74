"""The GPU code's host-side logic, run on the CPU with fake TensorRT contexts and onnxruntime sessions.

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


# -- text plans: tokens (B, L), lengths (B,), index (B, K) -> logits (B, K, V) ------------------------------------


class FakeTextContext:
    """A text plan's execution context: reads the three inputs from their raw addresses and writes, for every
    (row, column), logits [index, tokens[row, 0], lengths, 0...] into the output address, so a test can tell which
    rows and positions each call was given and where the engine put the answers."""

    def __init__(self, vocab: int = 4) -> None:
        self.vocab = vocab
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addr: dict[str, int] = {}
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        (B, K) = self.shapes["index"]
        return (B, K, self.vocab)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if ptr % 256:
            return False
        self.addr[name] = ptr
        return True

    def _read(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        n = int(torch.tensor(shape).prod())
        buf = (ctypes.c_int64 * n).from_address(self.addr[name])
        return torch.frombuffer(bytearray(buf), dtype=torch.int64).view(shape).clone()

    def execute_async_v3(self, stream: int) -> bool:
        tokens, lengths, index = self._read("tokens"), self._read("lengths"), self._read("index")
        B, K = index.shape
        assert tokens.shape[0] == lengths.shape[0] == B and int(index.max()) < tokens.shape[1]
        self.calls.append(dict(self.shapes))
        out = torch.zeros(B, K, self.vocab)
        out[..., 0] = index.float()
        out[..., 1] = tokens[:, :1].float()
        out[..., 2] = lengths[:, None].float()
        ctypes.memmove(self.addr["logits"], out.numpy().ctypes.data, out.numel() * 4)
        return True


def fake_text_engine(context: FakeTextContext, *, batch=(2, 3), seq=(1, 8), k=(2, 3), context_len: int = 16):
    from unmask.plugins.runtimes.tensorrt import TensorRTEngine

    eng = TensorRTEngine.__new__(TensorRTEngine)
    eng.context, eng.vocab_size, eng._in, eng._out = context, context.vocab, "tokens", "logits"
    eng._out_dtype = torch.float32
    eng.inputs, eng.seq_len = ("lengths", "index"), context_len
    eng.info = SimpleNamespace(path=Path("t.plan"), inputs=("lengths", "index"))
    eng._set_profile({"tokens": ((batch[0], seq[0]), (batch[0], seq[0]), (batch[1], seq[1])),
                      "lengths": ((batch[0],), (batch[0],), (batch[1],)),
                      "index": ((batch[0], k[0]), (batch[0], k[0]), (batch[1], k[1]))})
    return eng


def test_tensorrt_text_chunks_rows_and_index_columns():
    """4 rows on a profile of batch 2..3 and K 2..3, an index of 5 columns: row chunks 3 + 1 (padded to 2), column
    chunks 3 + 2; every logit lands at its own (row, column), padding rows and columns dropped."""
    ctx = FakeTextContext()
    eng = fake_text_engine(ctx)
    tokens = torch.arange(4 * 6, dtype=torch.int64).view(4, 6)
    lengths = torch.tensor([6, 3, 5, 2])
    index = torch.tensor([[0, 1, 2, 3, 4], [2, 1, 0, 0, 0], [4, 3, 2, 1, 0], [1, 1, 0, 0, 1]])
    parts = eng._run_chunks(tokens, 1, lengths=lengths, index=index)
    assert [tuple(p.shape) for p in parts] == [(3, 5, 4), (1, 5, 4)]
    got = torch.cat(parts)
    assert torch.equal(got[..., 0], index.float())
    assert torch.equal(got[..., 1], tokens[:, :1].float().expand(4, 5))
    assert torch.equal(got[..., 2], lengths[:, None].float().expand(4, 5))
    shapes = [(c["tokens"], c["lengths"], c["index"]) for c in ctx.calls]
    assert shapes == [((3, 6), (3,), (3, 3)), ((3, 6), (3,), (3, 2)),  # rows 0-2: columns 0-2, then 3-4
                      ((2, 6), (2,), (2, 3)), ((2, 6), (2,), (2, 2))]  # row 3 padded to the min batch 2
    one = eng._run_chunks(tokens[:2], 1, lengths=lengths[:2], index=index[:2, :1])  # K 1 < min K 2: padded
    assert one[0].shape == (2, 1, 4) and torch.equal(one[0][..., 0], index[:2, :1].float())


def test_tensorrt_text_inputs_are_checked_and_completed():
    eng = fake_text_engine(FakeTextContext())
    feeds = eng._feeds(torch.zeros(2, 5, dtype=torch.int64), {})  # no lengths, no index: full rows, every position
    assert torch.equal(feeds["lengths"], torch.tensor([5, 5])) and torch.equal(feeds["index"][1], torch.arange(5))
    with pytest.raises(InputError, match=r"built for rows of 1..8 tokens, got 9; rebuild it .* --max-seq 9"):
        eng._feeds(torch.zeros(2, 9, dtype=torch.int64), {})
    with pytest.raises(InputError, match="index must be an int64 tensor of shape"):
        eng._feeds(torch.zeros(2, 5, dtype=torch.int64), {"index": torch.zeros(3, 2, dtype=torch.int64)})
    with pytest.raises(InputError, match="takes no 'given' input"):
        eng._feeds(torch.zeros(2, 5, dtype=torch.int64), {"given": torch.zeros(2, 5, dtype=torch.bool)})
    from unmask.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="profile .* context 4 cannot hold"):
        fake_text_engine(FakeTextContext(), context_len=4)


def test_text_profile_defaults_and_limits():
    from unmask.export.tensorrt import text_profile

    assert text_profile(4096) == ((1, 512, 2048), (1, 32, 2048))
    assert text_profile(256) == ((1, 256, 256), (1, 32, 256))
    assert text_profile(64, opt_seq=40, max_seq=48, opt_k=8, max_k=16) == ((1, 40, 48), (1, 8, 16))
    assert text_profile(16) == ((1, 16, 16), (1, 16, 16))
    for kwargs, msg in (({"max_seq": 5000}, "--max-seq 5000 must lie in 1..4096"),
                        ({"opt_seq": 4000, "max_seq": 1024}, "--opt-seq 4000"),
                        ({"max_k": 3000, "max_seq": 2048}, "--max-k 3000"),
                        ({"opt_k": 64, "max_k": 32}, "--opt-k 64")):
        with pytest.raises(ConfigError, match=msg):
            text_profile(4096, **kwargs)


class FakeTRT:
    """The parts of the tensorrt module build_plan touches, recording the optimization profile it is given."""

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = 0

    class BuilderFlag:
        TF32 = 3

    def __init__(self, inputs: list[str]) -> None:
        self.inputs, self.profile = inputs, {}
        outer = self

        class Profile:
            def set_shape(self, name, lo, opt, hi):  # noqa: ANN001, ANN202
                outer.profile[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Config:
            def set_memory_pool_limit(self, pool, size):  # noqa: ANN001, ANN202
                outer.workspace = size

            def clear_flag(self, flag):  # noqa: ANN001, ANN202
                outer.cleared = flag

            def add_optimization_profile(self, profile):  # noqa: ANN001, ANN202
                outer.added = profile

        class Network:
            num_inputs = len(inputs)

            def get_input(self, i):  # noqa: ANN001, ANN202
                return SimpleNamespace(name=inputs[i])

        class Builder:
            def __init__(self, logger):  # noqa: ANN001
                pass

            def create_network(self, flags):  # noqa: ANN001, ANN202
                outer.flags = flags
                return Network()

            def create_builder_config(self):  # noqa: ANN202
                return Config()

            def create_optimization_profile(self):  # noqa: ANN202
                return Profile()

            def build_serialized_network(self, network, config):  # noqa: ANN001, ANN202
                return b"plan"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):  # noqa: ANN001
                pass

            def parse_from_file(self, path):  # noqa: ANN001, ANN202
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_build_plan_gives_every_text_input_a_profile(tmp_path):
    """IOptimizationProfile.set_shape for tokens (B, L), lengths (B,) and index (B, K), one batch range for all."""
    from unmask.core.errors import CheckpointError
    from unmask.export.tensorrt import build_plan, text_profile

    info = SimpleNamespace(input_name="tokens", inputs=("lengths", "index"), seq_len=4096, precision="fp32")
    trt = FakeTRT(["tokens", "lengths", "index"])
    plan = build_plan(trt, tmp_path / "m.onnx", info, min_batch=1, opt_batch=8, max_batch=32, workspace_gb=1.0,
                      log=lambda _m: None, text=text_profile(4096, max_seq=1024))
    assert plan == b"plan" and trt.flags == 2 and trt.cleared == FakeTRT.BuilderFlag.TF32
    assert trt.profile == {"tokens": ((1, 1), (8, 512), (32, 1024)), "lengths": ((1,), (8,), (32,)),
                           "index": ((1, 1), (8, 32), (32, 1024))}
    puzzle = FakeTRT(["tokens"])
    build_plan(puzzle, tmp_path / "m.onnx", SimpleNamespace(input_name="tokens", inputs=(), seq_len=81,
                                                            precision="fp16"),
               min_batch=1, opt_batch=64, max_batch=256, workspace_gb=1.0, log=lambda _m: None)
    assert puzzle.profile == {"tokens": ((1, 81), (64, 81), (256, 81))}
    with pytest.raises(CheckpointError, match=r"expected \['tokens', 'lengths', 'index'\]"):
        build_plan(FakeTRT(["tokens"]), tmp_path / "m.onnx", info, min_batch=1, opt_batch=8, max_batch=32,
                   workspace_gb=1.0, log=lambda _m: None, text=text_profile(4096))


def test_onnxruntime_tensorrt_provider_profile_for_text():
    from unmask.plugins.runtimes.onnxruntime import OnnxRuntimeOptions, trt_profile_options

    opts = OnnxRuntimeOptions(device="tensorrt", trt_min_batch=1, trt_opt_batch=8, trt_max_batch=16, trt_max_seq=300)
    assert trt_profile_options(opts, "tokens", 4096, text=True) == {
        "trt_profile_min_shapes": "tokens:1x1,lengths:1,index:1x1",
        "trt_profile_opt_shapes": "tokens:8x300,lengths:8,index:8x32",
        "trt_profile_max_shapes": "tokens:16x300,lengths:16,index:16x300"}
