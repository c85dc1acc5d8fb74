"""Pickle-free, atomic checkpoints: safetensors for tensors, JSON for everything else.

A *model directory* holds ``model.safetensors`` and ``config.json`` (the resolved config: task, backbone, training
options, unmask version). A training *checkpoint* is a model directory plus ``optimizer.safetensors`` and
``state.json`` (step, optimizer scalars, RNG states). A *run directory* holds ``checkpoints/step-NNNNNNN/`` and a
``LATEST`` file naming the newest complete one. Every write goes to a temporary directory first and is renamed into
place, so a crash (even SIGKILL) never leaves a half-written checkpoint behind.

Every file is checksummed: ``config.json`` carries a SHA-256 over the weights and the model-defining config, and
one per other file (``checksum.files``: state, optimizer, masking pool, EMA weights, logs). A resume checks them all
and the state's shape first; a damaged checkpoint is one error naming the previous intact one. ``LATEST`` may only
name a checkpoint of its own run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from unmask.core.errors import CheckpointError
from unmask.core.files import apply_umask, read_text, remove_stale_temps


def _read_text(p: Path, what: str) -> str:
    """UTF-8 text of ``p`` (FileNotFoundError when missing; not UTF-8: a CheckpointError naming the line)."""
    if not p.is_file():
        raise FileNotFoundError(p)
    return read_text(p, what, CheckpointError)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "LATEST"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
FORMAT = "unmask-model/1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


ALIASES = "unmask.aliases"  # safetensors metadata: {name: name of the tensor it shares memory with}


def _unshared(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (an embedding shared with the output layer) stored once: safetensors keeps no shared memory, so
    every further name of one tensor becomes an alias (in the file's metadata) that loading restores."""
    first: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), int(v.storage_offset()), tuple(int(n) for n in v.shape))
        if key in first:
            aliases[k] = first[key]
        else:
            first[key] = k
            out[k] = v
    return out, aliases


def save_model_dir(
    out: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    *,
    optimizer: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a model directory (and optionally the training state) atomically; returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # what SIGKILLed writers left (never a live process's)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        tensors, aliases = _unshared({k: v.detach().contiguous().cpu() for k, v in state_dict.items()})
        save_file(tensors, str(tmp / MODEL_FILE),
                  metadata={"format": FORMAT, **({ALIASES: json.dumps(aliases)} if aliases else {})})
        if optimizer is not None:
            opt_tensors, opt_meta = _flatten_optimizer(optimizer)
            save_file(opt_tensors, str(tmp / OPTIM_FILE), metadata={"format": FORMAT})
            _write_json(tmp / STATE_FILE, {**(state or {}), "optimizer": opt_meta})
        elif state is not None:
            _write_json(tmp / STATE_FILE, state)
        for name, group in (extra_tensors or {}).items():  # more safetensors files (e.g. a training pool, EMA)
            unique, aliases = _unshared({k: v.detach().contiguous().cpu() for k, v in group.items()})
            save_file(unique, str(tmp / name),
                      metadata={"format": FORMAT, **({ALIASES: json.dumps(aliases)} if aliases else {})})
        for name, text in (extra_files or {}).items():  # str: UTF-8; bytes: copied as they are (e.g. a damaged log)
            (tmp / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        digest, covers = model_checksum(config, (tmp / MODEL_FILE).read_bytes())
        files = {f.name: _file_sha256(f) for f in sorted(tmp.iterdir()) if f.name not in (MODEL_FILE, CONFIG_FILE)}
        _write_json(tmp / CONFIG_FILE, {"format": FORMAT, **config,
                                        CHECKSUM_KEY: {"sha256": digest, "covers": covers, "files": files}})
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        apply_umask(tmp)  # mkdtemp's 0700 and safetensors' 0600: another account or container may load the model
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
        remove_stale_temps(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
                entry[k] = {"tensor": f"{pid}.{k}"}
            else:
                entry[k] = v
        meta_state[str(pid)] = entry
    return tensors, {"state": meta_state, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        st = {}
        for k, v in entry.items():
            st[k] = tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
        state[int(pid)] = st
    return {"state": state, "param_groups": meta["param_groups"]}


def refuse_pickle(path: Path) -> None:
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"refusing to load '{path}': it is a pickle file, which can run arbitrary code; unmask checkpoints are "
            "safetensors + JSON directories (train with `unmask train` or convert the weights to safetensors)"
        )
    if path.is_dir():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles and not (path / MODEL_FILE).exists():
            raise CheckpointError(
                f"refusing to load pickle file(s) {', '.join(pickles)} in '{path}'; unmask checkpoints are "
                "model.safetensors + config.json"
            )


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory from a model dir, a checkpoint dir or a run dir (its newest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"model path '{p}' does not exist; pass a model directory, a run directory, .onnx or .plan"
        )
    refuse_pickle(p)
    if p.is_file():
        raise CheckpointError(f"'{p}' is a file; a PyTorch model is a directory with {MODEL_FILE} and {CONFIG_FILE}")
    if (p / MODEL_FILE).exists():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"'{p}' holds no {MODEL_FILE} and no checkpoints/; is it a model or run directory?")
    return latest


def checkpoint_name(step: int) -> str:
    """The directory name of a run's checkpoint at ``step`` (``step-0000100``)."""
    return f"step-{int(step):07d}"


def checkpoint_at(run_dir: str | os.PathLike, step: int) -> Path | None:
    """The complete checkpoint of ``run_dir`` at ``step``, or None."""
    cand = Path(run_dir) / "checkpoints" / checkpoint_name(step)
    return cand if (cand / MODEL_FILE).exists() and (cand / CONFIG_FILE).exists() else None


_STEP_RE = re.compile(r"step-[0-9]+")


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run (``checkpoints/step-NNNNNNN`` with a config), oldest first."""
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    return sorted(d for d in ckdir.iterdir()
                  if _STEP_RE.fullmatch(d.name) and d.is_dir() and (d / CONFIG_FILE).exists())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``LATEST`` names (the newest complete one where LATEST is missing or names none that exists).

    LATEST holds one checkpoint name (``step-0000100``) of this run's ``checkpoints/``; anything else (not UTF-8,
    a path such as ``../../other/model``) is refused, so a damaged pointer never loads another model."""
    run = Path(run_dir)
    ptr = run / LATEST
    done = checkpoints(run)
    if ptr.is_file():
        name: str | None = None
        try:
            name = ptr.read_bytes().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc})"
        else:
            why = f"names {name[:80]!r}, which is not a checkpoint of this run"
        if name is None or not _STEP_RE.fullmatch(name):
            fix = (f"write {done[-1].name} (the newest) into it or delete it" if done
                   else "delete it (the run has no checkpoint)")
            raise CheckpointError(f"'{ptr}' {why}; it holds the name of one of '{run / 'checkpoints'}': {fix}")
        cand = run / "checkpoints" / name
        if (cand / MODEL_FILE).exists() and (cand / CONFIG_FILE).exists():
            return cand
    return done[-1] if done else None


def mark_latest(run_dir: Path, ckpt: Path) -> None:
    remove_stale_temps(run_dir, LATEST)
    tmp = run_dir / f".{LATEST}.tmp{os.getpid()}"
    tmp.write_text(ckpt.name + "\n")
    os.replace(tmp, run_dir / LATEST)


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(model_dir) / CONFIG_FILE
    try:
        cfg = json.loads(_read_text(p, "model config"))
    except FileNotFoundError:
        raise CheckpointError(f"'{p}' is missing; a model directory needs {CONFIG_FILE}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{p}' is not valid JSON ({exc}); the checkpoint is corrupt") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"'{p}' is not an unmask model config (format {FORMAT!r} expected)")
    for key in ("task", "backbone"):
        if key not in cfg:
            raise CheckpointError(f"'{p}' has no '{key}' section; the checkpoint is corrupt or from another tool")
    for key in ("task", "backbone", "train"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise CheckpointError(f"'{p}': section '{key}' is a {type(cfg[key]).__name__}, not a table; the config "
                                  "was edited or is corrupt")
    return cfg


# -- checksum -------------------------------------------------------------------------------------------------------
# config.json carries a SHA-256 over the weights file and the config values that define the model, so overwritten
# tensor bytes, or an edited config that still loads (n_heads, causal, ...), fail on load instead of decoding
# garbage. The config values are taken from the *resolved* sections (defaults filled in) and only for the keys
# listed in ``covers``: a key removed by hand that equals its default, or an option added to unmask later, changes
# nothing. Models written before checksums existed (no ``checksum`` key) load unchecked.
CHECKSUM_KEY = "checksum"
_CHECKSUM_TAG = b"unmask-checksum/1\n"
_NOT_MODEL = {"task": ("cache_dir",)}  # keys that change neither the data layout nor the model


def _resolved_section(kind: str, section: Any) -> dict[str, Any]:
    from unmask.core.models import resolved_backbone, resolved_task

    try:
        return (resolved_task if kind == "task" else resolved_backbone)(section, kind)
    except Exception:  # noqa: BLE001 - an unknown plugin: hash the section as written (the same on both ends)
        return dict(section) if isinstance(section, dict) else {"name": section}


def model_checksum(config: dict[str, Any], weights: bytes,
                   covers: dict[str, list[str]] | None = None) -> tuple[str, dict[str, list[str]]]:
    """(hex SHA-256, covered keys) of ``weights`` (the bytes of model.safetensors) and the model-defining config:
    the ``task`` and ``backbone`` sections and ``train.objective``. ``covers`` (from a stored checksum) fixes
    which keys are hashed; by default every resolved key."""
    sections = {
        "task": _resolved_section("task", config.get("task", {})),
        "backbone": _resolved_section("backbone", config.get("backbone", {})),
        "train": {"objective": str((config.get("train") or {}).get("objective", "mdm"))},
    }
    if covers is None:
        covers = {k: sorted(x for x in v if x not in _NOT_MODEL.get(k, ())) for k, v in sections.items()}
    picked = {k: {x: sections.get(k, {}).get(x) for x in covers.get(k, [])} for k in sorted(covers)}
    h = hashlib.sha256(_CHECKSUM_TAG)
    h.update(json.dumps(picked, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n")
    h.update(weights)
    return h.hexdigest(), covers


def _verify_checksum(path: Path, data: bytes) -> None:
    """Compare the checksum stored in the config.json beside ``path`` (if any) with one computed now."""
    cfg_path = path.parent / CONFIG_FILE
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # read_config reports a missing or broken config.json
    stored = cfg.get(CHECKSUM_KEY) if isinstance(cfg, dict) else None
    if stored is None:
        return  # written before checksums existed
    if not (isinstance(stored, dict) and isinstance(stored.get("sha256"), str)
            and isinstance(stored.get("covers"), dict)):
        raise CheckpointError(f"'{cfg_path}' has a malformed '{CHECKSUM_KEY}' entry; the config was edited or is "
                              "corrupt")
    digest, _ = model_checksum(cfg, data, stored["covers"])
    if digest != stored["sha256"]:
        raise CheckpointError(
            f"weights in '{path}' do not match its config: the checksum over {MODEL_FILE} and the model sections of "
            f"{CONFIG_FILE} (task, backbone, train.objective) differs from the one written with them, so one of them "
            "was changed or damaged since; restore the original files or retrain"
        )


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a model's weights (``model.safetensors``) are checked against the checksum
    in its config.json first (one SHA-256 over the file: ~10 ms for the 3 MB default model)."""
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing; the checkpoint is incomplete")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"'{path}' cannot be read ({exc.strerror or exc})") from None
    try:
        tensors = load_bytes(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({exc}); the checkpoint is corrupt") from None
    if path.name == MODEL_FILE:
        _verify_checksum(path, data)
    aliases = _aliases(data, path)
    for name, src in aliases.items():  # tied weights stored once (see _unshared)
        if src not in tensors:
            raise CheckpointError(f"'{path}': '{name}' is an alias of '{src}', which the file does not hold; the "
                                  "checkpoint is corrupt")
        tensors[name] = tensors[src]
    return tensors


def _aliases(data: bytes, path: Path) -> dict[str, str]:
    """The alias table in a safetensors file's header metadata ({} when none)."""
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        table = json.loads(meta.get(ALIASES, "{}"))
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise CheckpointError(f"'{path}' has an unreadable header; the checkpoint is corrupt") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise CheckpointError(f"'{path}' has a malformed alias table; the checkpoint is corrupt")
    return table


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_files(ckpt: Path) -> None:
    """Compare every file listed in the checksum entry of ``ckpt``'s config.json (training state, optimizer,
    masking pool, EMA weights, logs; the weights are checked by :func:`load_tensors`) with its SHA-256; a
    checkpoint written before per-file checksums existed passes unchecked."""
    cfg = read_config(ckpt)
    files = (cfg.get(CHECKSUM_KEY) or {}).get("files") if isinstance(cfg.get(CHECKSUM_KEY), dict) else None
    if files is None:
        return
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"'{ckpt / CONFIG_FILE}' has a malformed '{CHECKSUM_KEY}.files' entry")
    for name, digest in sorted(files.items()):
        f = ckpt / name
        if Path(name).name != name or not f.is_file():
            raise CheckpointError(f"'{f}' is missing; the checkpoint is incomplete")
        try:
            ok = _file_sha256(f) == digest
        except OSError as exc:
            raise CheckpointError(f"'{f}' cannot be read ({exc.strerror or exc})") from None
        if not ok:
            raise CheckpointError(f"'{f}' does not match the checksum written with it; it was changed or damaged")


def _bad_state(sp: Path, what: str) -> CheckpointError:
    return CheckpointError(f"'{sp}' is not a training state written by unmask ({what}); the checkpoint is corrupt")


def load_training_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state.json contents, optimizer state dict or None): every file checked against its checksum first, and the
    state's shape checked (a step, the RNG streams as base64 strings, the optimizer's tensors all present), so a
    damaged checkpoint is one :class:`CheckpointError`, never a KeyError or a silent resume."""
    sp = ckpt / STATE_FILE
    if not sp.is_file():
        raise CheckpointError(f"'{ckpt}' has no {STATE_FILE}; it is a model, not a resumable checkpoint")
    check_files(ckpt)
    try:
        state = json.loads(_read_text(sp, "training state"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{sp}' is not valid JSON ({exc}); the checkpoint is corrupt") from None
    if not isinstance(state, dict):
        raise _bad_state(sp, f"a JSON {type(state).__name__}, not an object")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _bad_state(sp, f"'step' is {step!r}, not a count of steps")
    for key in ("samples", "train_seconds", "ema_steps"):
        v = state.get(key, 0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise _bad_state(sp, f"'{key}' is {v!r}, not a number >= 0")
    rng = state.get("rng", {})
    if not isinstance(rng, dict):
        raise _bad_state(sp, "'rng' is not an object")
    for rank, streams in rng.items():
        if not (isinstance(streams, dict) and isinstance(streams.get("numpy"), dict)
                and all(isinstance(streams.get(k), str) for k in ("torch", "torch_global"))):
            raise _bad_state(sp, f"'rng.{rank}' lacks its torch, torch_global and numpy streams")
        for k in ("torch", "torch_global"):
            try:
                base64.b64decode(streams[k], validate=True)
            except ValueError:
                raise _bad_state(sp, f"'rng.{rank}.{k}' is not base64") from None
    opt = None
    if "optimizer" in state:
        meta = state.pop("optimizer")
        tensors = load_tensors(ckpt / OPTIM_FILE)
        try:
            opt = _unflatten_optimizer(tensors, meta)
            if not (isinstance(opt["param_groups"], list) and all(isinstance(g, dict) and isinstance(
                    g.get("params"), list) for g in opt["param_groups"])):
                raise ValueError("param_groups")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad_state(sp, f"its optimizer entry does not fit {OPTIM_FILE}: {type(exc).__name__} {exc}") from None
    return state, opt


def damage(ckpt: Path) -> str | None:
    """Why checkpoint ``ckpt`` cannot be resumed from (one line), or None when its files are intact."""
    try:
        read_config(ckpt)
        load_tensors(ckpt / MODEL_FILE)
        load_training_state(ckpt)
    except CheckpointError as exc:
        return str(exc)
    return None


def previous_good(ckpt: Path) -> Path | None:
    """The newest checkpoint of ``ckpt``'s run older than ``ckpt`` whose files are intact."""
    for c in reversed(checkpoints(ckpt.parent.parent)):
        if c.name < ckpt.name and damage(c) is None:
            return c
    return None


def damaged_message(ckpt: Path, why: str) -> str:
    """One line: checkpoint ``ckpt`` is damaged (``why``), and how ``--resume`` gets to the previous good one."""
    run = ckpt.parent.parent
    prev = previous_good(ckpt)
    if prev is None:
        fix = ("no earlier checkpoint of the run is intact: restore the files, or train afresh in another out "
               "directory")
    else:
        fix = (f"the previous good one is '{prev}': move the damaged one out of the way (mv {ckpt} "
               f"{run / (ckpt.name + '.damaged')}) and --resume continues from {prev.name}")
    return f"checkpoint '{ckpt}' is damaged ({why}); {fix}"
