"""The transformer backbone: shapes, bidirectional vs causal, every position option, ONNX export with dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask.core.models import build_model
from unmask.core.task import build_task


@pytest.fixture(scope="module")
def task():
    return build_task({"name": "sudoku", "cache_dir": ""})


@pytest.mark.parametrize("positions", ["learned", "structure", "both", "rope", "none"])
@pytest.mark.parametrize("norm,mlp", [("layernorm", "gelu"), ("rmsnorm", "swiglu")])
def test_shapes(task, positions, norm, mlp):
    m, section = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4,
                                    "positions": positions, "norm": norm, "mlp": mlp})
    x = torch.randint(0, 10, (3, 81))
    assert m(x).shape == (3, 81, 10) and section["positions"] == positions


def test_bidirectional_vs_causal(task):
    torch.manual_seed(0)
    x = torch.randint(0, 9, (1, 81))
    y = x.clone()
    y[0, 80] = (y[0, 80] + 1) % 9
    bi, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2})
    ca, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2}, causal=True)
    with torch.no_grad():
        assert not torch.allclose(bi(x)[0, 0], bi(y)[0, 0])  # the last token influences the first
        assert torch.allclose(ca(x)[0, :80], ca(y)[0, :80], atol=1e-6)  # but never under causal attention


def test_onnx_export_dynamic_batch(task, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2})
    m.eval()
    path = tmp_path / "m.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(m, (torch.zeros(2, 81, dtype=torch.int64),), str(path), input_names=["tokens"],
                      output_names=["logits"], dynamic_shapes={"tokens": {0: batch}}, dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        x = torch.randint(0, 10, (b, 81))
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, m(x).numpy(), atol=1e-4)
