"""Corruption is detected: model directories and ONNX files carry a checksum verified on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unmask.core.errors import CheckpointError
from unmask.core.models import load_model

ROOT = Path(__file__).parents[2]


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def flip_tensor_byte(path: Path) -> None:
    """Overwrite one byte of tensor data (past the safetensors header), keeping the file parseable."""
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 101] ^= 0x40
    path.write_bytes(bytes(data))


def edit_config(d: Path, fn) -> None:  # noqa: ANN001
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_model_dir_has_a_checksum_and_loads(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert len(cfg["checksum"]["sha256"]) == 64 and "n_heads" in cfg["checksum"]["covers"]["backbone"]
    load_model(tiny_model)


def test_overwritten_weights_fail(tiny_model, tmp_path):
    bad = copy(tiny_model, tmp_path / "bad")
    flip_tensor_byte(bad / "model.safetensors")
    with pytest.raises(CheckpointError, match="checksum over model.safetensors"):
        load_model(bad)


@pytest.mark.parametrize("edit", [
    lambda c: c["backbone"].update(n_heads=2),  # still loads: same weight shapes
    lambda c: c["backbone"].update(causal=True),  # still loads: same weights
    lambda c: c["train"].update(objective="arm"),
])
def test_edited_model_config_fails(tiny_model, tmp_path, edit):
    bad = copy(tiny_model, tmp_path / "bad")
    edit_config(bad, edit)
    with pytest.raises(CheckpointError, match="do not match its config|checksum"):
        load_model(bad)


def test_harmless_config_edits_still_load(tiny_model, tmp_path):
    ok = copy(tiny_model, tmp_path / "ok")

    def edit(c: dict) -> None:
        c["task"]["cache_dir"] = "elsewhere"  # where data is cached changes nothing
        c["backbone"].pop("norm")  # a key equal to its default, as an older unmask wrote it
        c["note"] = "anything outside the model sections"

    edit_config(ok, edit)
    load_model(ok)


def test_models_without_a_checksum_still_load(tiny_model, tmp_path):
    old = copy(tiny_model, tmp_path / "old")
    edit_config(old, lambda c: c.pop("checksum"))
    load_model(old)
    load_model(ROOT / "models" / "sudoku-default")


def test_onnx_checksum(tiny_onnx, tmp_path):
    from unmask.core.decoding.runtime import open_engine
    from unmask.export.metadata import K_CHECKSUM, read_onnx_info

    path, report = tiny_onnx
    data = path.read_bytes()
    assert K_CHECKSUM.encode() in data
    read_onnx_info(path)
    open_engine(path, "onnxruntime")
    # one byte of a weight changed: still a valid ONNX file, decodes garbage without the check
    i = data.rindex(b"\x00\x00\x80\x3f") if b"\x00\x00\x80\x3f" in data else len(data) // 2
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_onnx_info(bad)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        open_engine(bad, "onnxruntime")


def test_onnx_metadata_disagreeing_with_its_config(tiny_onnx, tmp_path):
    import onnx

    from unmask.export.metadata import read_onnx_info

    path, _ = tiny_onnx
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "unmask.vocab_size":
            p.value = "12"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(CheckpointError, match=r"disagrees with itself: metadata unmask.vocab_size = '12' but its "
                                              r"embedded config gives '10'"):
        read_onnx_info(bad)


def test_onnx_flipped_metadata_byte_is_one_line(tiny_onnx, tmp_path):
    """A flipped byte anywhere in the unmask metadata (keys, values, the embedded config) is a CheckpointError from
    the checksum, checked before onnxruntime parses the file (never a traceback from its session)."""
    from unmask.core.decoding.runtime import open_engine

    path, _ = tiny_onnx
    data = path.read_bytes()
    start = min(data.rindex(k.encode()) for k in ("unmask.format", "unmask.sha256", "unmask_config")) - 4
    bad = tmp_path / "bad.onnx"
    for i in range(start, len(data)):  # the metadata entries, at the end of the file
        for value in (data[i] ^ 0x01, 0xFF):  # 0xff: a metadata string that is no longer UTF-8
            if value == data[i] or (value != 0xFF and i % 5):
                continue
            bad.write_bytes(data[:i] + bytes([value]) + data[i + 1:])
            with pytest.raises(CheckpointError) as info:
                open_engine(bad, "onnxruntime")
            assert "\n" not in str(info.value), (i, value, info.value)
