"""Shared fixtures for the export tests: a tiny untrained Sudoku model and its fp32 ONNX export (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_tiny_model(out: Path, cache: Path, *, d_model: int = 32, sharpen: float = 60.0) -> Path:
    """An untrained 1-layer transformer for Sudoku, saved as a model directory.

    The output head is scaled up so logits are O(1) rather than O(0.01): decisions are then not near-ties, and a
    parity test that compares decoded puzzles is meaningful (and stable across CPUs) without training.
    """
    from unmask.core.training.checkpoint import save_model_dir
    from unmask.core.models import build_model
    from unmask.core.task import build_task

    torch.manual_seed(0)
    task = build_task({"name": "sudoku", "cache_dir": str(cache)})
    module, section = build_model(task, {"name": "transformer", "d_model": d_model, "n_layers": 1, "n_heads": 4})
    with torch.no_grad():
        module.head.weight.mul_(sharpen)
    config = {"task": task.config_dict(), "backbone": section, "train": {"objective": "mdm"}}
    return save_model_dir(out, module.state_dict(), config)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-model")
    return make_tiny_model(root / "tiny", root / "cache")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from unmask.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("export-onnx") / "tiny.onnx"
    report = export_onnx(tiny_model, out, log=None)
    return out, report
