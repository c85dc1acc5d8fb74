"""unmask.export: turn a trained model into a self-describing ONNX file or TensorRT plan, and check it.

* :func:`unmask.export.onnx.export_onnx` - ``torch.onnx.export(dynamo=True)`` with a dynamic batch axis, the resolved
  config in the file's ``metadata_props``, ``onnx.checker`` full check, optional int8 dynamic quantization, and a
  parity check against the PyTorch model on real task inputs.
* :func:`unmask.export.tensorrt.build_tensorrt` - a TensorRT 10/11 plan (strongly typed) with an optimization profile
  over the batch axis and a JSON sidecar holding the config and the profile.
* :mod:`unmask.export.metadata` - reading and validating that metadata (:class:`ArtifactInfo`).
* :mod:`unmask.export.parity` - the parity check shared by export, the GPU check and the tests.
* :mod:`unmask.export.cli` - ``unmask export`` / ``tools/export.py``.
* :mod:`unmask.export.gpu_check` - ``tools/gpu_check.py``: every GPU engine's parity, speed and decoding on one model.

The engines that run these artifacts are the runtime plugins ``onnxruntime`` and ``tensorrt``
(``unmask.plugins.runtimes``); open them with :func:`unmask.core.decoding.runtime.open_engine`. Importing this
package is cheap: onnx, onnxruntime and tensorrt are imported by the functions that need them.
"""

from __future__ import annotations

__all__ = ["export_onnx", "build_tensorrt"]


def __getattr__(name: str):  # lazy: importing unmask.export must not import torch.onnx or tensorrt
    if name == "export_onnx":
        from unmask.export.onnx import export_onnx

        return export_onnx
    if name == "build_tensorrt":
        from unmask.export.tensorrt import build_tensorrt

        return build_tensorrt
    raise AttributeError(f"module 'unmask.export' has no attribute {name!r}")
