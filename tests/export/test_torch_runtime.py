"""Engine options: torch ``compile`` and ``micro_batch`` (torch, onnxruntime) give the whole-batch logits at any size;
a compiler failure is named at open."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unmask.core.decoding.runtime import open_engine
from unmask.core.errors import DeviceError


def test_compiled_engine_matches_eager_at_varying_batch(tiny_model: Path) -> None:
    eager = open_engine(tiny_model, "torch")
    comp = open_engine(tiny_model, "torch", compile=True)
    assert comp.compiled and not eager.compiled
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3, 7):  # the batch shrinks and grows as rows finish: no shape may break it
        tokens = torch.randint(0, eager.vocab_size, (batch, eager.seq_len), generator=gen)
        torch.testing.assert_close(comp(tokens), eager(tokens), rtol=1e-4, atol=1e-4)


def test_compile_failure_is_one_line_at_open(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module, **_):  # noqa: ANN001, ANN003 - stands in for a compiler that cannot build (no C++ compiler)
        def run(*args):  # noqa: ANN002
            raise RuntimeError("InductorError: no working C++ compiler found\n  (traceback lines)")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(DeviceError, match=r"torch.compile of .* failed \(RuntimeError: InductorError: no working C\+\+ "
                       r"compiler found \(traceback lines\)\); open it without --compile") as info:
        open_engine(tiny_model, "torch", compile=True)
    assert "\n" not in str(info.value)


def test_micro_batches_give_the_whole_batch_logits(tiny_model: Path) -> None:
    whole = open_engine(tiny_model, "torch", micro_batch=0)
    assert open_engine(tiny_model, "torch").micro_batch > 0  # sliced by default on a CPU
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, whole.vocab_size, (23, whole.seq_len), generator=gen)
    ref = whole(tokens)
    for n in (1, 4, 22, 23, 64):  # slices that divide the batch, that do not, and that exceed it
        out = open_engine(tiny_model, "torch", micro_batch=n)(tokens)
        assert out.shape == ref.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_onnxruntime_micro_batches_give_the_whole_batch_logits(tiny_onnx: tuple[Path, dict]) -> None:
    pytest.importorskip("onnxruntime")
    whole = open_engine(tiny_onnx[0], "onnxruntime", micro_batch=0)
    assert open_engine(tiny_onnx[0], "onnxruntime").micro_batch > 0  # sliced by default on a CPU
    tokens = torch.randint(0, whole.vocab_size, (21, whole.seq_len), generator=torch.Generator().manual_seed(2))
    ref = whole(tokens)
    for n in (1, 5, 21, 40):
        torch.testing.assert_close(open_engine(tiny_onnx[0], "onnxruntime", micro_batch=n)(tokens), ref)
