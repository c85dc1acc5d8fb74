"""GPU runtimes against torch: onnxruntime CUDA/TensorRT providers (``-m gpu``) and TensorRT plans (``-m tensorrt``).

They skip where the GPU, onnxruntime-gpu or TensorRT is absent, and are deselected by default (pyproject addopts).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:  # neither the [cpu] nor the [gpu] extra installed
        return []
    return ort.get_available_providers()


# skip before any fixture runs (the ONNX export fixture takes seconds)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
needs_ort_cuda = pytest.mark.skipif(not CUDA or "CUDAExecutionProvider" not in _ort_providers(),
                                    reason="no CUDA GPU or no onnxruntime CUDAExecutionProvider (pip install .[gpu])")
needs_ort_trt = pytest.mark.skipif(not CUDA or "TensorrtExecutionProvider" not in _ort_providers(),
                                   reason="no CUDA GPU or no onnxruntime TensorrtExecutionProvider")
needs_tensorrt = pytest.mark.skipif(not CUDA or importlib.util.find_spec("tensorrt") is None,
                                    reason="no CUDA GPU or TensorRT not installed (pip install .[trt])")


def _decode_same(ref, engine, task, device: torch.device) -> None:  # noqa: ANN001
    from unmask.core.decoding.loop import decode
    from unmask.core.strategy import build_strategy

    data = task.generate("test", 24, 5)
    for name in ("margin", "top_prob"):
        s = build_strategy(name, steps=20)
        a = decode(ref, torch.from_numpy(data.inputs), torch.from_numpy(data.given), s, mask_id=task.mask_id,
                   generator=torch.Generator().manual_seed(0))
        b = decode(engine, torch.from_numpy(data.inputs).to(device), torch.from_numpy(data.given).to(device), s,
                   mask_id=task.mask_id, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.tokens, b.tokens.cpu()), name
        assert torch.equal(a.nfe, b.nfe.cpu()), name


def _parity(engine, tiny_model: Path, label: str = "fp32") -> dict:  # noqa: ANN001
    from unmask.core.models import load_model
    from unmask.export.parity import check_parity, parity_inputs

    task, module, _ = load_model(tiny_model)
    tokens = parity_inputs(task, 64)
    with torch.no_grad():
        ref = module(tokens)
    return check_parity(ref, engine, tokens, mask_id=task.mask_id, label=label, what="gpu test", log=None)


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_matches_cpu(tiny_model: Path) -> None:
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.task import build_task

    ref = open_engine(tiny_model, "torch")
    cuda = open_engine(tiny_model, "torch", device="cuda")
    assert _parity(cuda, tiny_model)["passed"]
    _decode_same(ref, cuda, build_task(ref.config["task"]), cuda.device)


@pytest.mark.gpu
@pytest.mark.parametrize("device,provider", [
    pytest.param("cuda", "CUDAExecutionProvider", marks=needs_ort_cuda),
    pytest.param("tensorrt", "TensorrtExecutionProvider", marks=needs_ort_trt),
])
def test_onnxruntime_gpu_matches_torch(tiny_onnx: tuple[Path, dict], tiny_model: Path, device: str,
                                      provider: str) -> None:
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.task import build_task

    path, _ = tiny_onnx
    engine = open_engine(path, "onnxruntime", device=device)
    assert engine.providers[0] == provider and engine.device.type == "cuda"
    x = torch.full((5, 81), 9, dtype=torch.int64)
    assert torch.equal(engine(x).cpu(), engine(x.cuda()).cpu())  # host and device tokens, same result
    first = engine(x.cuda())
    engine(torch.zeros(5, 81, dtype=torch.int64, device="cuda"))
    assert torch.equal(first, engine(x.cuda()))  # returned logits are not overwritten by later calls
    assert _parity(engine, tiny_model)["passed"]
    ref = open_engine(tiny_model, "torch")
    _decode_same(ref, engine, build_task(ref.config["task"]), engine.device)


@pytest.mark.gpu
@needs_ort_cuda
def test_onnxruntime_fp16_and_bf16_exports_on_gpu(tiny_model: Path, tmp_path: Path) -> None:
    from unmask.export.onnx import export_onnx

    for precision in ("fp16", "bf16"):
        report = export_onnx(tiny_model, tmp_path / f"{precision}.onnx", precision=precision, log=None)
        assert report["parity"]["passed"], precision


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_plan_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    from unmask.core.decoding.runtime import open_engine, runtime_for_path
    from unmask.core.task import build_task
    from unmask.export.metadata import read_plan_info, sidecar_path
    from unmask.export.tensorrt import build_tensorrt

    plan = tmp_path / "tiny.plan"
    report = build_tensorrt(tiny_model, plan, onnx_out=tmp_path / "tiny.onnx", min_batch=2, opt_batch=4, max_batch=8,
                            workspace_gb=1.0, log=None)
    assert plan.is_file() and sidecar_path(plan).is_file() and (tmp_path / "tiny.onnx").is_file()
    assert report["parity"]["passed"]
    info = read_plan_info(plan)
    assert info.extra["profile"] == {"min": 2, "opt": 4, "max": 8, "seq_len": 81}
    assert runtime_for_path(plan) == "tensorrt"
    engine = open_engine(plan)
    assert (engine.min_batch, engine.max_batch, engine.vocab_size, engine.seq_len) == (2, 8, 10, 81)
    x = torch.randint(0, 10, (19, 81))  # split into 8 + 8 + 3 rows
    one = engine(x)
    assert one.shape == (19, 81, 10) and one.device.type == "cuda"
    assert torch.equal(engine(x[:1]), one[:1])  # padded up to the profile's min batch
    ref = open_engine(tiny_model, "torch")
    _decode_same(ref, engine, build_task(ref.config["task"]), engine.device)


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_from_onnx_and_parser_errors(tiny_onnx: tuple[Path, dict], tmp_path: Path) -> None:
    import onnx

    from unmask.core.errors import CheckpointError
    from unmask.export.tensorrt import build_tensorrt

    path, _ = tiny_onnx
    report = build_tensorrt(None, tmp_path / "a.plan", from_onnx=path, max_batch=16, workspace_gb=1.0, log=None)
    assert report["parity"]["reference"].startswith("onnxruntime cpu")
    model = onnx.load(str(path))
    model.graph.node[0].op_type = "NoSuchOp"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(CheckpointError, match="parser"):
        build_tensorrt(None, tmp_path / "b.plan", from_onnx=bad, workspace_gb=1.0, parity=False, log=None)


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_cli_with_a_small_max_batch(tiny_model: Path, tmp_path: Path) -> None:
    """--max-batch 16 alone: --opt-batch follows it (min(64, max)), and the plan decodes batches larger than 16."""
    from unmask.core.cli import main
    from unmask.core.decoding.runtime import open_engine

    plan = tmp_path / "m.plan"
    assert main(["export", "--model", str(tiny_model), "--trt", str(plan), "--max-batch", "16",
                 "--workspace-gb", "1"]) == 0
    engine = open_engine(plan, "tensorrt")
    assert engine.max_batch == 16
    assert engine(torch.randint(0, 10, (37, 81))).shape == (37, 81, 10)


@pytest.mark.gpu
@needs_ort_cuda
def test_onnxruntime_cuda_runs_on_its_own_stream(tiny_onnx: tuple[Path, dict]) -> None:
    """onnxruntime gets a non-zero stream handle of the engine's own, ordered with the caller's stream."""
    from unmask.core.decoding.runtime import open_engine

    path, _ = tiny_onnx
    engine = open_engine(path, "onnxruntime", device="cuda")
    assert engine._torch_stream is not None and engine._torch_stream.cuda_stream != 0
    x = torch.randint(0, 10, (8, 81), device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # the caller on a non-default stream: results must still be ordered
        a = engine(x)
        b = engine(x.cpu())
    torch.cuda.synchronize()
    assert torch.equal(a, b)


def _text_model(tmp_path: Path) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from text_models import build

    return build("llada", tmp_path / "llada")


def _text_decode_same(ref, engine, model: Path, device: torch.device) -> None:  # noqa: ANN001
    """Four prompts of different lengths in one batch, top_prob and blockwise margin: the same tokens as torch."""
    from unmask.core.decoding.schedule import decode_many
    from unmask.core.generate import text_strategy
    from unmask.core.task import build_task

    task = build_task(ref.config["task"], "model task", model=model)
    data = task.rows([{"prompt": p, "gen_length": 8 + 3 * i} for i, p in enumerate(
        ["the cat sat on", "one two three four five six", "hello", "a big red dog"])])
    for spec, block in (("top_prob", 0), ("margin", 4)):
        s = text_strategy(spec, 20, block)
        out = [decode_many(e, torch.from_numpy(data.inputs).to(dev), torch.from_numpy(data.given).to(dev), s,
                           mask_id=task.mask_id, generator=torch.Generator().manual_seed(0), batch_size=4,
                           lengths=torch.from_numpy(data.meta["length"]).to(dev))
               for e, dev in ((ref, torch.device("cpu")), (engine, device))]
        assert torch.equal(out[0].tokens, out[1].tokens.cpu()), spec
        assert torch.equal(out[0].nfe, out[1].nfe.cpu()), spec


@pytest.mark.gpu
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_ort_cuda),
                                    pytest.param("tensorrt", marks=needs_ort_trt)])
def test_onnxruntime_gpu_text_export_decodes_like_torch(tmp_path: Path, device: str) -> None:
    """A text export (tokens, lengths, index) through onnxruntime's CUDA / TensorRT providers with IO binding."""
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.onnx import export_onnx

    model = _text_model(tmp_path)
    export_onnx(model, tmp_path / "t.onnx", log=None)
    engine = open_engine(tmp_path / "t.onnx", "onnxruntime", device=device, trt_max_batch=8, trt_max_seq=64)
    assert engine.inputs == ("lengths", "index")
    _text_decode_same(open_engine(model, "torch"), engine, model, engine.device)


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_text_plan_round_trip(tmp_path: Path) -> None:
    """A text plan with a (batch, length, K) profile: parity at build, then decoding like torch (K chunked when the
    index is wider than --max-k)."""
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.tensorrt import build_tensorrt

    model = _text_model(tmp_path)
    report = build_tensorrt(model, tmp_path / "t.plan", min_batch=1, max_batch=8, max_seq=64, max_k=8, log=None)
    assert report["parity"]["passed"] and report["profile"]["seq"]["max"] == 64 and report["profile"]["k"]["max"] == 8
    engine = open_engine(tmp_path / "t.plan", "tensorrt")
    assert engine.inputs == ("lengths", "index") and (engine.max_seq, engine.max_k) == (64, 8)
    _text_decode_same(open_engine(model, "torch"), engine, model, engine.device)
