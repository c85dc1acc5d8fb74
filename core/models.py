"""Building and loading models from resolved configs (task + backbone sections)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from unmask.core.config import resolve_plugin
from unmask.core.errors import CheckpointError, ConfigError
from unmask.core.registry import backbones
from unmask.core.task import ModelSpec, Task, build_task
from unmask.core.training.checkpoint import MODEL_FILE, load_tensors, read_config, resolve_model_dir


class SpecSource(Protocol):
    """What :func:`build_model` reads of its task: a :class:`Task`, or a Task-like description of another sequence
    layout (an objective's, e.g. the autoregressive baseline's ``ArmSpecTask``: :meth:`Objective.model_task`)."""

    def model_spec(self, causal: bool = ...) -> ModelSpec: ...


def build_model(task: SpecSource, backbone_section: Any, *, causal: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """(module, resolved backbone section) for ``task``."""
    from unmask.core.config import plugin_section

    name, plugin, options = resolve_plugin(backbones, backbone_section, "backbone")
    module = plugin.build(options, task.model_spec(causal=causal))
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone '{name}' build() returned {type(module).__name__}, not a torch.nn.Module")
    return module, plugin_section(name, options)


def resolved_backbone(section: Any, where: str = "backbone") -> dict[str, Any]:
    """A backbone section with every default filled in (what ``build_model`` records), so configs written by an
    older unmask (without keys added since) compare equal to today's when they mean the same model."""
    from unmask.core.config import plugin_section

    name, _plugin, options = resolve_plugin(backbones, section, where)
    return plugin_section(name, options)


def resolved_task(section: Any, where: str = "task") -> dict[str, Any]:
    """A task section with every default filled in (see ``resolved_backbone``)."""
    return build_task(section, where).config_dict()


def foreign_model_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The unmask config of a model directory written by another framework (a Hugging Face checkpoint), from the
    first backbone plugin whose ``describe(path)`` knows it; None for unmask's own directories and unknown ones."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "config.json").is_file():
        try:
            head = (p / "config.json").read_bytes()[:4096]
        except OSError:
            return None
        if b'"unmask-model/' in head:
            return None
    from unmask.core.errors import PluginError

    for name in backbones.names():
        try:
            describe = getattr(backbones.get(name), "describe", None)
        except PluginError:
            continue
        if callable(describe):
            config = describe(p)
            if config:
                return dict(config)
    return None


def load_model(path: str | os.PathLike, *, task: Task | None = None,
               overrides: list[str] | None = None) -> tuple[Task, nn.Module, dict[str, Any]]:
    """(task, module in eval mode on CPU, config) from a model, checkpoint or run directory, or a model directory of
    another framework that a backbone plugin describes (a Hugging Face checkpoint: the ``hf`` backbone).

    With ``task`` given, the checkpoint must have been trained for the same task and options. ``overrides``
    (``section.key=value``) change the config of a foreign model before it is built (``backbone.trust_remote_code=
    true``, ``task.mask_id=126336``); unmask's own checkpoints take ``task.*`` settings only (a text model's
    ``gen_length``, ``chat``): the other sections define the weights.
    """
    foreign = foreign_model_config(path)
    if foreign is not None:
        from unmask.core.config import apply_overrides

        config = apply_overrides(foreign, overrides)
        try:
            ck_task = build_task(config["task"], "model task")
            if task is not None:
                check_task_matches(task, config, str(path))
            module, backbone = build_model(ck_task, config["backbone"])
        except ConfigError as exc:
            raise CheckpointError(f"model '{path}': {exc}") from None
        config["task"] = ck_task.config_dict()
        config["backbone"] = backbone
        return ck_task, module.eval(), config
    weights = [o for o in overrides or [] if not o.strip().startswith("task.")]
    if weights:  # the backbone and training sections define the weights (and are checksummed)
        raise ConfigError(f"'{path}' is an unmask model: only its task's options can be set ({weights[0]})")
    model_dir = resolve_model_dir(path)
    config = read_config(model_dir)
    if overrides:  # decoding-side task options (a text model's gen_length, chat, ...), after the checksum check
        from unmask.core.config import apply_overrides

        config = apply_overrides(config, overrides)
    try:
        ck_task = build_task(config["task"], "checkpoint task")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint '{model_dir}' has an unusable task section: {exc}") from None
    ck_task.bind_model_dir(model_dir)
    if task is not None:
        check_task_matches(task, config, str(model_dir))
    from unmask.core.objective import model_objective

    try:
        objective = model_objective(ck_task, config)  # what the backbone was built for (an ARM: its sequences)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint '{model_dir}' has an unusable train section: {exc}") from None
    try:
        module, _ = build_model(objective.model_task(), config["backbone"], causal=objective.causal)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint '{model_dir}' has an unusable backbone section: {exc}") from None
    state = load_tensors(Path(model_dir) / MODEL_FILE)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"weights in '{model_dir / MODEL_FILE}' do not match its config ({first}); the checkpoint is corrupt or "
            "mixed up"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"weights in '{model_dir / MODEL_FILE}' do not match its config (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}); the checkpoint is corrupt or mixed up"
        )
    module.eval()
    return ck_task, module, config


def check_task_matches(task: Task, config: dict[str, Any], where: str) -> None:
    want = task.config_dict()
    have = config.get("task", {})
    if have.get("name") != want["name"]:
        raise CheckpointError(
            f"model '{where}' was trained for task '{have.get('name')}', not '{want['name']}'; pick a matching model"
        )
    layout = ("vocab_size", "seq_len")
    ck = build_task(have, "checkpoint task")
    for attr in layout + ("mask_id",):
        if getattr(ck, attr) != getattr(task, attr):
            raise CheckpointError(
                f"model '{where}' has {attr}={getattr(ck, attr)} but task '{task.name}' has {getattr(task, attr)}; "
                "the model does not fit this task configuration"
            )
    if ck.structure() != task.structure():  # e.g. a Zebra grid of 4 houses x 6 attributes against 6 x 4
        raise CheckpointError(f"model '{where}' was trained on another token layout of task '{task.name}' (its "
                              "positions' structure differs); the model does not fit this task configuration")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def autocast_context(device: torch.device, bf16: bool) -> Any:
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()
