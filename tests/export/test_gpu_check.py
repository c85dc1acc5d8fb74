"""unmask.export.gpu_check (``tools/gpu_check.py``) on the CPU: the no-GPU exit, the engine list, and the report
assembled from CPU engines standing in for the GPU ones. The real run is ``tools/gpu_check.py`` on
a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_no_gpu_is_one_line_and_exit_2(monkeypatch, capsys):
    from unmask.export import gpu_check as gc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.gpu_check("does-not-matter", "unused.json") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: tools/gpu_check.py needs a CUDA GPU, but torch ")
    assert not Path("unused.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit of the script")
def test_script_without_gpu(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: tools/gpu_check.py needs a CUDA GPU") and r.stderr.count("\n") == 1
    assert r.stdout == "" and not out.exists()


def test_engine_factories_list_what_is_missing(tmp_path, capsys):
    from unmask.export.gpu_check import engine_factories

    skipped: dict[str, str] = {}
    names = [n for n, _, _ in engine_factories("m", tmp_path, ["CPUExecutionProvider"], skipped)]
    assert names == ["torch_cuda_fp32", "torch_cuda_bf16"]
    assert set(skipped) == {"ort_cuda", "ort_tensorrt", "tensorrt"}
    assert "pip install .[trt]" in skipped["tensorrt"]
    assert "skipping tensorrt:" in capsys.readouterr().out

    skipped = {}
    got = engine_factories("m", tmp_path, ["TensorrtExecutionProvider", "CUDAExecutionProvider"], skipped,
                           trt_precisions="fp32, bf16,", trt_version="10.0")
    assert [(n, label) for n, label, _ in got] == [
        ("torch_cuda_fp32", "fp32"), ("torch_cuda_bf16", "bf16"), ("ort_cuda_fp32", "fp32"),
        ("ort_cuda_fp16", "fp16"), ("ort_tensorrt_fp32", "fp32"), ("tensorrt_fp32", "fp32"),
        ("tensorrt_bf16", "bf16"),
    ]
    assert skipped == {}


def test_report_from_cpu_engines(tiny_model, tmp_path, capsys):
    """torch on the CPU plays torch_cuda_fp32; a noisy engine decodes but fails parity; a broken one errors without
    hiding the others."""
    from unmask.core.engine import FunctionEngine
    from unmask.core.models import load_model
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.gpu_check import check_engines, failed_engines, write_report
    from unmask.export.parity import parity_inputs, run_batched

    task, _, _ = load_model(tiny_model)
    tokens = parity_inputs(task, n=16)
    reference = run_batched(open_engine(tiny_model, "torch"), tokens)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(task.seq_len, task.vocab_size, generator=g)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return noise.expand(x.shape[0], -1, -1).clone()  # (B, L, V)

    def broken():
        raise RuntimeError("no such\n  engine")

    factories = [
        ("torch_cuda_fp32", "fp32", lambda: open_engine(tiny_model, "torch")),
        ("noisy", "fp32", lambda: FunctionEngine(noisy, task.vocab_size, task.seq_len)),
        ("broken", "fp16", broken),
    ]
    engines = check_engines(factories, task=task, data=task.generate("test", 6, 0), tokens=tokens,
                            reference=reference, strategies=["margin", "vanilla"], batch=4, forward_batches=[1, 3],
                            budget=0.0)
    assert list(engines) == ["torch_cuda_fp32", "noisy", "broken"]
    ok, bad, err = engines["torch_cuda_fp32"], engines["noisy"], engines["broken"]
    assert ok["parity"]["passed"] and not bad["parity"]["passed"]
    assert set(ok["forward"]) == {"1", "3"} and ok["forward"]["3"]["rows_per_s"] > 0
    assert set(ok["decode"]) == {"margin", "vanilla"}
    assert ok["decode"]["margin"]["deterministic"] and not ok["decode"]["vanilla"]["deterministic"]
    assert "same_as_torch_cuda_fp32" not in ok["decode"]["margin"]
    assert 0.0 <= bad["decode"]["margin"]["same_as_torch_cuda_fp32"] <= 1.0
    assert "same_as_torch_cuda_fp32" not in bad["decode"]["vanilla"]  # random order: not comparable
    assert err["error"] == "RuntimeError: no such engine" and "Traceback" in err["traceback"]
    assert err["label"] == "fp16" and "parity" not in err
    assert "   FAILED: RuntimeError: no such engine" in capsys.readouterr().out

    report = {"model": str(tiny_model), "engines": engines, "skipped": {}}
    assert failed_engines(report) == ["noisy", "broken"]
    path = write_report(report, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text())["engines"]["noisy"]["label"] == "fp32"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
