"""ONNX export and the onnxruntime runtime on the CPU: round trip, metadata, parity, decoding, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from unmask.core.errors import CheckpointError, ConfigError, DeviceError, InputError


def test_export_round_trip_passes_parity(tiny_onnx: tuple[Path, dict]) -> None:
    path, report = tiny_onnx
    assert path.is_file() and report["bytes"] == path.stat().st_size
    p = report["parity"]
    assert p["passed"] and p["max_abs_diff"] <= p["tolerance"]
    assert p["argmax_agreement"] == 1.0 and p["margin_agreement"] == 1.0
    assert p["rows"] == 64 and p["masked_positions"] > 64
    assert not [f for f in path.parent.iterdir() if f.name.startswith(".")], "temporary files left behind"

    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "tokens" and inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims[0].dim_param and dims[1].dim_value == 81  # dynamic batch, fixed sequence
    assert [o.name for o in model.graph.output] == ["logits"]
    assert any(op.domain in ("", "ai.onnx") and op.version >= 18 for op in model.opset_import)


def test_metadata_readable_without_unmask(tiny_onnx: tuple[Path, dict], tiny_model: Path) -> None:
    path, _ = tiny_onnx
    script = (
        "import json, sys, onnxruntime as ort\n"
        "m = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']).get_modelmeta()\n"
        "assert 'unmask' not in sys.modules and not any(k.startswith('unmask.') for k in sys.modules)\n"
        "print(json.dumps(m.custom_metadata_map))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", script, str(path)], capture_output=True, text=True, check=True)
    meta = json.loads(out.stdout)
    assert meta["unmask.task"] == "sudoku"
    assert (meta["unmask.vocab_size"], meta["unmask.seq_len"], meta["unmask.mask_id"]) == ("10", "81", "9")
    assert meta["unmask.backbone"] == "transformer" and meta["unmask.precision"] == "fp32"
    assert meta["unmask.version"] and meta["unmask.format"] == "unmask-onnx/1"
    config = json.loads(meta["unmask_config"])
    saved = json.loads((tiny_model / "config.json").read_text())
    assert config["task"] == saved["task"] and config["backbone"] == saved["backbone"]


def test_engine_describes_itself(tiny_onnx: tuple[Path, dict]) -> None:
    from unmask.core.decoding.runtime import open_engine, runtime_for_path

    path, _ = tiny_onnx
    assert runtime_for_path(path) == "onnxruntime"
    engine = open_engine(path, threads=1)
    assert (engine.vocab_size, engine.seq_len, engine.mask_id) == (10, 81, 9)
    assert engine.max_batch is None and engine.device == torch.device("cpu")
    assert engine.config["task"]["name"] == "sudoku" and engine.providers[0] == "CPUExecutionProvider"
    for b in (1, 3, 17):  # any batch size through the dynamic axis
        logits = engine(torch.full((b, 81), 9, dtype=torch.int64))
        assert logits.shape == (b, 81, 10) and logits.dtype == torch.float32
    with pytest.raises(InputError):
        engine(torch.zeros(2, 80, dtype=torch.int64))


def test_decoding_matches_torch(tiny_onnx: tuple[Path, dict], tiny_model: Path) -> None:
    """Same puzzles, margin strategy, argmax values, no noise: torch and onnxruntime commit the same tokens."""
    from unmask.core.decoding.loop import decode
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.strategy import build_strategy

    path, _ = tiny_onnx
    ref = open_engine(tiny_model, "torch")
    ort_engine = open_engine(path, "onnxruntime", threads=1)
    from unmask.core.task import build_task

    task = build_task(ref.config["task"])
    data = task.generate("test", 12, 3)
    inputs, given = torch.from_numpy(data.inputs), torch.from_numpy(data.given)
    for name in ("margin", "top_prob"):
        strategy = build_strategy(name, steps=20)
        assert strategy.deterministic
        a = decode(ref, inputs, given, strategy, mask_id=9, generator=torch.Generator().manual_seed(0))
        b = decode(ort_engine, inputs, given, strategy, mask_id=9, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.tokens, b.tokens), name
        assert torch.equal(a.nfe, b.nfe), name


def test_int8_quantized_export(tiny_model: Path, tmp_path: Path) -> None:
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.metadata import read_onnx_info
    from unmask.export.onnx import export_onnx

    out = tmp_path / "q.onnx"
    report = export_onnx(tiny_model, out, quantize="int8", parity_rows=32, log=None)
    assert report["parity"]["passed"] and report["quantize"] == "int8"
    info = read_onnx_info(out)
    assert info.quantize == "int8" and info.precision == "fp32" and info.label == "int8"
    engine = open_engine(out, threads=1)
    assert engine(torch.full((2, 81), 9, dtype=torch.int64)).shape == (2, 81, 10)


def test_corrupt_or_foreign_onnx_is_a_checkpoint_error(tiny_onnx: tuple[Path, dict], tmp_path: Path) -> None:
    import onnx
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.metadata import read_onnx_info

    path, _ = tiny_onnx
    data = path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model" * 50)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    broken = tmp_path / "broken-meta.onnx"
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "unmask_config":
            p.value = "{not json"
    onnx.save(model, str(broken))
    for bad in (truncated, garbage, empty, foreign, broken):
        with pytest.raises(CheckpointError) as exc:
            open_engine(bad, "onnxruntime")
        assert "\n" not in str(exc.value)
        with pytest.raises(CheckpointError):
            read_onnx_info(bad)
    with pytest.raises(CheckpointError, match="no unmask metadata"):
        open_engine(foreign)


def test_bad_export_arguments(tiny_model: Path, tmp_path: Path) -> None:
    from unmask.export.onnx import export_onnx

    with pytest.raises(ConfigError, match="quantize"):
        export_onnx(tiny_model, tmp_path / "a.onnx", precision="fp16", quantize="int8", log=None)
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export_onnx(tiny_model, tmp_path / "a.bin", log=None)
    with pytest.raises(ConfigError, match="batch"):
        export_onnx(tiny_model, tmp_path / "a.onnx", batch=1, log=None)
    with pytest.raises(CheckpointError):
        export_onnx(tmp_path / "missing", tmp_path / "a.onnx", log=None)
    assert not list(tmp_path.iterdir())


def _has_cuda_ort() -> bool:
    import onnxruntime as ort

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_has_cuda_ort(), reason="this machine has a GPU and onnxruntime-gpu")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_device_without_gpu_is_a_device_error(tiny_onnx: tuple[Path, dict], device: str) -> None:
    from unmask.core.decoding.runtime import open_engine

    path, _ = tiny_onnx
    with pytest.raises(DeviceError) as exc:
        open_engine(path, "onnxruntime", device=device)
    msg = str(exc.value)
    assert "\n" not in msg and "pip install .[gpu]" in msg


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_tensorrt(), reason="this machine has TensorRT and a GPU")
def test_trt_without_tensorrt_is_a_one_line_error(tiny_model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from unmask.core.cli import main as unmask_main
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.cli import main
    from unmask.export.tensorrt import build_tensorrt

    with pytest.raises(DeviceError, match=r"pip install \.\[trt\]"):
        build_tensorrt(tiny_model, tmp_path / "m.plan", log=None)
    for run in (main, lambda a: unmask_main(["export", *a])):
        assert run(["--model", str(tiny_model), "--trt", str(tmp_path / "m.plan")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        assert "tensorrt" in err and "pip install .[trt]" in err
    assert not list(tmp_path.iterdir())
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(DeviceError, match="tensorrt"):
        open_engine(plan)


def test_cli_writes_onnx_and_report(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unmask.export.cli import main

    out, rep = tmp_path / "m.onnx", tmp_path / "report.json"
    assert main(["--model", str(tiny_model), "--onnx", str(out), "--no-parity", "--report", str(rep)]) == 0
    assert out.is_file()
    report = json.loads(rep.read_text())
    assert report["onnx"]["parity"] is None and report["onnx"]["seq_len"] == 81
    assert main(["--model", str(tiny_model)]) == 2
    assert "--onnx" in capsys.readouterr().err


def test_parity_check_catches_a_wrong_model(tiny_onnx: tuple[Path, dict], tiny_model: Path) -> None:
    """The parity check is not vacuous: a perturbed engine fails it with a CheckpointError."""
    from unmask.core.engine import FunctionEngine
    from unmask.core.models import load_model
    from unmask.export.parity import check_parity, parity_inputs

    task, module, _ = load_model(tiny_model)
    tokens = parity_inputs(task, 16)
    with torch.no_grad():
        ref = module(tokens)
    ok = FunctionEngine(lambda t: module(t).detach() + 1e-6, 10, 81)
    assert check_parity(ref, ok, tokens, mask_id=9, label="fp32", what="ok", log=None)["passed"]
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(size=tuple(ref.shape)).astype(np.float32))
    bad = FunctionEngine(lambda t: module(t).detach() + noise[: t.shape[0]], 10, 81)
    with pytest.raises(CheckpointError, match="parity check failed"):
        check_parity(ref, bad, tokens, mask_id=9, label="fp32", what="bad", log=None)


def test_bf16_export_refuses_the_cpu(tiny_model: Path, tmp_path: Path) -> None:
    """bf16 graphs are for GPU engines: onnxruntime on the CPU says so instead of failing obscurely."""
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.metadata import read_onnx_info
    from unmask.export.onnx import export_onnx

    out = tmp_path / "bf16.onnx"
    if not _has_cuda_ort():
        with pytest.raises(DeviceError, match="--no-parity"):
            export_onnx(tiny_model, out, precision="bf16", log=None)
    export_onnx(tiny_model, out, precision="bf16", parity=False, log=None)
    assert read_onnx_info(out).precision == "bf16"
    with pytest.raises(DeviceError, match="bf16"):
        open_engine(out, "onnxruntime", device="cpu")


def test_an_autoregressive_model_is_refused_before_any_export(tmp_path: Path) -> None:
    """An ARM reads its own token layout (row, column and value tokens over a longer sequence), which the exported
    artifact's task metadata cannot describe: one line naming the layout, and nothing written."""
    from unmask.export.onnx import export_onnx

    model = Path(__file__).parents[2] / "models" / "sudoku-arm"
    out = tmp_path / "arm.onnx"
    with pytest.raises(ConfigError, match=r"train.objective = 'arm'.*vocabulary 29, sequences of 244.*torch runtime"):
        export_onnx(model, out)
    assert not list(tmp_path.iterdir())
