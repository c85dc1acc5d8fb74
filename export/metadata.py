"""What an exported artifact says about itself: the ONNX ``metadata_props`` and the TensorRT sidecar.

Every exported file carries the resolved config of the model it came from, so an engine knows its vocabulary size,
sequence length, mask id and task from the artifact alone (never from CLI flags). ONNX files hold it in
``metadata_props``: the full resolved config as JSON under ``unmask_config``, plus flat string keys that a plain
onnxruntime script can read without importing unmask::

    import onnxruntime as ort
    meta = ort.InferenceSession("m.onnx").get_modelmeta().custom_metadata_map
    meta["unmask.seq_len"], meta["unmask.vocab_size"], meta["unmask.mask_id"], meta["unmask.task"]

A TensorRT plan is an opaque, GPU- and version-specific blob, so its description lives in ``<plan>.json`` beside it
(same keys, plus the optimization profile and the TensorRT version and GPU it was built for).

Text models (a backbone that takes ``lengths`` and ``index``, e.g. the ``hf`` backbone) add two keys:

* ``unmask.inputs``: the graph's optional inputs after ``tokens``, comma-separated (``lengths,index``); the engine
  lists them in its ``inputs`` (the engine contract, :mod:`unmask.core.engine`);
* ``unmask.files``: the files the task keeps beside a model's weights (:meth:`Task.model_files`: a text model's
  tokenizer; from a Hugging Face directory also its ``config.json``, from which transformers picks the tokenizer
  class), as JSON ``{name: base64}``. They travel inside the artifact (covered by its checksum), so an ``.onnx``
  file or a plan with its sidecar is all a machine needs. An engine writes them once into a content-addressed
  folder under :func:`unmask.core.resources.home` (``files/<sha256>/``) and points the task's ``tokenizer`` option
  there (:func:`bind_model_files`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmask.core.errors import CheckpointError
from unmask.core.files import read_text

ONNX_FORMAT = "unmask-onnx/1"
PLAN_FORMAT = "unmask-tensorrt/1"
INPUT_NAME = "tokens"  # (B, L) int64
OUTPUT_NAME = "logits"  # (B, L, V) float32
CONFIG_KEY = "unmask_config"
PRECISIONS = ("fp32", "fp16", "bf16")
QUANTIZATIONS = ("int8",)

# flat keys (all values are strings, as ONNX metadata requires)
K_FORMAT = "unmask.format"
K_VERSION = "unmask.version"
K_TASK = "unmask.task"
K_VOCAB = "unmask.vocab_size"
K_SEQ = "unmask.seq_len"
K_MASK = "unmask.mask_id"
K_BACKBONE = "unmask.backbone"
K_PRECISION = "unmask.precision"
K_QUANT = "unmask.quantize"
K_DYN_SEQ = "unmask.dynamic_seq"
K_INPUT = "unmask.input"
K_OUTPUT = "unmask.output"
K_OBJECTIVE = "unmask.objective"
K_INPUTS = "unmask.inputs"  # optional graph inputs after the tokens: "" or "lengths,index"
K_FILES = "unmask.files"  # JSON {file name: base64}: the task's model files (a tokenizer)
OPTIONAL_INPUTS = ("lengths", "index")  # (B,) int64 real lengths; (B, K) int64 positions to return logits at
K_CHECKSUM = "unmask.sha256"  # SHA-256 of the whole file with this value replaced by CHECKSUM_PLACEHOLDER
CHECKSUM_PLACEHOLDER = "0" * 64
_DESCRIBED = (K_TASK, K_VOCAB, K_SEQ, K_MASK, K_BACKBONE, K_OBJECTIVE)  # flat keys derived from the config


@dataclass
class ArtifactInfo:
    """The self-description of an exported model (ONNX metadata or TensorRT sidecar)."""

    path: Path
    format: str
    config: dict[str, Any]  # the resolved config of the checkpoint (task, backbone, train, ...)
    task: str
    vocab_size: int
    seq_len: int
    mask_id: int
    backbone: str
    precision: str  # fp32 | fp16 | bf16: the dtype of the weights and activations in the graph
    quantize: str | None  # None | "int8" (dynamic int8 weights for onnxruntime on CPU)
    dynamic_seq: bool
    unmask_version: str
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    extra: dict[str, Any] = field(default_factory=dict)  # plan: profile, tensorrt version, GPU
    inputs: tuple[str, ...] = ()  # optional inputs after the tokens (OPTIONAL_INPUTS), in graph order
    files: dict[str, str] = field(default_factory=dict)  # the task's model files, base64 (K_FILES)

    @property
    def label(self) -> str:
        return self.quantize or self.precision


def unmask_version() -> str:
    from unmask.core import __version__

    return __version__


def describe(config: dict[str, Any], *, precision: str, quantize: str | None, dynamic_seq: bool) -> dict[str, str]:
    """The flat metadata of an artifact exported from a checkpoint with resolved ``config``."""
    from unmask.core.task import build_task

    task = build_task(config["task"], "checkpoint task")
    clean = {k: v for k, v in config.items() if k != "format"}
    return {
        K_FORMAT: ONNX_FORMAT,
        K_VERSION: unmask_version(),
        K_TASK: task.name,
        K_VOCAB: str(task.vocab_size),
        K_SEQ: str(task.seq_len),
        K_MASK: str(task.mask_id),
        K_BACKBONE: str(config.get("backbone", {}).get("name", "?")),
        K_OBJECTIVE: str(config.get("train", {}).get("objective", "mdm")),
        K_PRECISION: precision,
        K_QUANT: quantize or "none",
        K_DYN_SEQ: "true" if dynamic_seq else "false",
        K_INPUT: INPUT_NAME,
        K_OUTPUT: OUTPUT_NAME,
        CONFIG_KEY: json.dumps(clean, sort_keys=True),
    }


def info_from_props(props: dict[str, str], path: Path, *, what: str = "ONNX file") -> ArtifactInfo:
    """Validate flat metadata (ONNX ``metadata_props`` or a sidecar) into an :class:`ArtifactInfo`."""
    fmt = props.get(K_FORMAT)
    if fmt is None or CONFIG_KEY not in props:
        raise CheckpointError(
            f"{what} '{path}' has no unmask metadata (no '{K_FORMAT}'/'{CONFIG_KEY}'); it was not written by "
            "`unmask export`, so its task, vocabulary and mask id are unknown; re-export it from the checkpoint"
        )
    if fmt not in (ONNX_FORMAT, PLAN_FORMAT):
        raise CheckpointError(
            f"{what} '{path}' has metadata format '{fmt}', which this unmask cannot read; re-export it"
        )
    try:
        config = json.loads(props[CONFIG_KEY])
        if not isinstance(config, dict) or "task" not in config or "backbone" not in config:
            raise ValueError("no task/backbone section")
        info = ArtifactInfo(
            path=path,
            format=fmt,
            config=config,
            task=str(props[K_TASK]),
            vocab_size=int(props[K_VOCAB]),
            seq_len=int(props[K_SEQ]),
            mask_id=int(props[K_MASK]),
            backbone=str(props.get(K_BACKBONE, "?")),
            precision=str(props.get(K_PRECISION, "fp32")),
            quantize=None if props.get(K_QUANT, "none") in ("none", "") else str(props[K_QUANT]),
            dynamic_seq=str(props.get(K_DYN_SEQ, "false")).lower() == "true",
            unmask_version=str(props.get(K_VERSION, "?")),
            input_name=str(props.get(K_INPUT, INPUT_NAME)),
            output_name=str(props.get(K_OUTPUT, OUTPUT_NAME)),
            inputs=_optional_inputs(props.get(K_INPUTS, "")),
            files=_files(props.get(K_FILES)),
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(
            f"{what} '{path}' has broken unmask metadata ({type(exc).__name__}: {exc}); re-export it"
        ) from None
    if info.vocab_size < 2 or info.seq_len < 1:
        raise CheckpointError(f"{what} '{path}' has impossible metadata (vocab {info.vocab_size}, seq {info.seq_len})")
    _check_consistent(props, info, what)
    return info


def _optional_inputs(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if len(set(names)) != len(names) or any(n not in OPTIONAL_INPUTS for n in names):
        raise ValueError(f"{K_INPUTS} = {text!r}: optional inputs are {', '.join(OPTIONAL_INPUTS)}, each once")
    return names


def _files(text: str | None) -> dict[str, str]:
    """The ``K_FILES`` map, checked: plain file names (never a path: they are written into a folder) to base64."""
    if text is None or text == "":
        return {}
    import base64
    import re

    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{K_FILES} is not a JSON object")
    for name, blob in data.items():
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", name)):
            raise ValueError(f"{K_FILES} names a file {name!r} that is not a plain file name")
        if not isinstance(blob, str):
            raise ValueError(f"{K_FILES}[{name!r}] is not a base64 string")
        base64.b64decode(blob.encode("ascii"), validate=True)  # binascii.Error is a ValueError
    return dict(data)


def encode_files(files: dict[str, bytes]) -> str:
    """``K_FILES``'s value for the files ``{name: bytes}`` (sorted, so the same files give the same text)."""
    import base64

    return json.dumps({k: base64.b64encode(files[k]).decode("ascii") for k in sorted(files)}, sort_keys=True)


def model_files_dir(info: ArtifactInfo) -> Path | None:
    """The folder holding the artifact's embedded model files (None when it has none): ``home()/files/<sha256>``,
    written once (temp folder + rename) and reused by every artifact with the same files."""
    if not info.files:
        return None
    import base64
    import hashlib
    import shutil
    import tempfile

    from unmask.core.resources import home

    files = {k: base64.b64decode(v) for k, v in info.files.items()}
    digest = hashlib.sha256(encode_files(files).encode()).hexdigest()
    root = home() / "files"
    final = root / digest
    if final.is_dir() and all((final / k).is_file() and (final / k).read_bytes() == v for k, v in files.items()):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.tmp-", dir=root))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if final.exists():  # an incomplete or damaged copy: replaced
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process put the same files there first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write the model files of '{info.path}' into '{root}' ({exc}); set UNMASK_HOME "
                              "to a writable folder") from None
    return final


def bind_model_files(info: ArtifactInfo) -> Path | None:
    """Write the embedded model files (:func:`model_files_dir`) and point the config's task at them: the ``text``
    task reads its tokenizer from the folder its ``tokenizer`` option names. Returns the folder (None: no files)."""
    folder = model_files_dir(info)
    if folder is not None and "tokenizer" in info.config.get("task", {}):
        info.config["task"]["tokenizer"] = str(folder)
    return folder


def _check_consistent(props: dict[str, str], info: ArtifactInfo, what: str) -> None:
    """The flat keys must say what the embedded config says (an edited file disagrees with itself)."""
    from unmask.core.errors import UnmaskError

    try:
        want = describe(info.config, precision=info.precision, quantize=info.quantize, dynamic_seq=info.dynamic_seq)
    except UnmaskError as exc:
        raise CheckpointError(f"{what} '{info.path}' embeds an unusable config ({exc}); re-export it") from None
    for key in _DESCRIBED:
        if key in props and str(props[key]) != want[key]:
            raise CheckpointError(
                f"{what} '{info.path}' disagrees with itself: metadata {key} = {props[key]!r} but its embedded config "
                f"gives {want[key]!r}; the file was edited or damaged, re-export it"
            )


def _checksum_field(value: str) -> bytes:
    """The serialized metadata entry (protobuf StringStringEntryProto) holding the checksum ``value``."""
    key = K_CHECKSUM.encode()
    return b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value)]) + value.encode()


def seal_onnx(data: bytes) -> bytes:
    """Fill the checksum placeholder of a serialized ONNX model with the SHA-256 of the whole file (computed with the
    placeholder in place): same length, so the protobuf stays valid."""
    import hashlib

    field_ = _checksum_field(CHECKSUM_PLACEHOLDER)
    assert data.count(field_) == 1, "the ONNX metadata has no (or more than one) checksum placeholder"
    digest = hashlib.sha256(data).hexdigest()
    return data.replace(field_, _checksum_field(digest))


def verify_onnx_checksum(path: Path, data: bytes, props: dict[str, str]) -> None:
    """Check the file bytes ``data`` against the checksum in ``props`` (files exported before checksums: none)."""
    import hashlib

    stored = props.get(K_CHECKSUM)
    if stored is None:
        # a file exported before checksums has none; one whose checksum entry a flipped byte turned into another
        # field (its tag) or another key still holds the entry's bytes: that file is damaged, not old
        if K_CHECKSUM.encode() in data or re.search(rb"\x12@[0-9a-f]{64}", data):
            raise CheckpointError(f"ONNX file '{path}' has a damaged {K_CHECKSUM} entry: its bytes changed after "
                                  "export; re-export it from the checkpoint")
        return
    field_ = _checksum_field(stored)
    if len(stored) != 64 or data.count(field_) != 1:
        raise CheckpointError(f"ONNX file '{path}' has a malformed {K_CHECKSUM} entry; the file was edited, "
                              "re-export it")
    if hashlib.sha256(data.replace(field_, _checksum_field(CHECKSUM_PLACEHOLDER))).hexdigest() != stored:
        raise CheckpointError(
            f"ONNX file '{path}' fails its checksum ({K_CHECKSUM}): its bytes changed after export (damaged or "
            "edited); re-export it from the checkpoint"
        )


def read_onnx_info(path: str | os.PathLike) -> ArtifactInfo:
    """Read and validate the unmask metadata of an ONNX file; a corrupt file or one without it is a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"ONNX file '{p}' does not exist")
    import onnx

    try:
        data = p.read_bytes()
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, OSError, onnx errors: all mean "unreadable"
        raise CheckpointError(
            f"'{p}' is not a readable ONNX model ({type(exc).__name__}: {_first(exc)}); re-export it"
        ) from None
    if not model.graph.node:
        raise CheckpointError(f"'{p}' holds no ONNX graph (empty or truncated file); re-export it")
    props = {m.key: m.value for m in model.metadata_props}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):  # protobuf: bytes if not UTF-8
        raise CheckpointError(f"ONNX file '{p}' has metadata that is not UTF-8 text: the file is damaged; re-export it")
    info = info_from_props(props, p)
    verify_onnx_checksum(p, data, props)
    return info


def sidecar_path(plan: str | os.PathLike) -> Path:
    p = Path(plan)
    return p.with_name(p.name + ".json")


def read_plan_info(plan: str | os.PathLike) -> ArtifactInfo:
    """Read and validate the JSON sidecar of a TensorRT plan (``X.plan.json``)."""
    p = Path(plan)
    side = sidecar_path(p)
    if not side.is_file():
        raise CheckpointError(
            f"TensorRT plan '{p}' has no sidecar '{side.name}' (its config and profile); rebuild it with "
            "`unmask export --trt`"
        )
    try:
        data = json.loads(read_text(side, "sidecar", CheckpointError))
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"sidecar '{side}' is not valid JSON ({exc}); rebuild the plan") from None
    if not isinstance(data, dict) or data.get(K_FORMAT) != PLAN_FORMAT:
        raise CheckpointError(f"'{side}' is not an unmask TensorRT sidecar ({K_FORMAT} = {PLAN_FORMAT!r} expected)")
    props = {k: v for k, v in data.items() if isinstance(v, str)}
    props[CONFIG_KEY] = json.dumps(data.get("config", {}))
    info = info_from_props(props, p, what="TensorRT plan")
    profile = data.get("profile")
    if not (isinstance(profile, dict) and all(isinstance(profile.get(k), int) for k in ("min", "opt", "max"))):
        raise CheckpointError(f"sidecar '{side}' has no valid 'profile' (min/opt/max batch); rebuild the plan")
    info.extra = {k: v for k, v in data.items() if not isinstance(v, str) and k != "config"}
    return info


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
