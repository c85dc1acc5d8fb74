"""Training objectives' contract: what an objective plugin provides and how trainer, loader and CLI dispatch to it.

An objective (registry kind ``objectives``; built-ins ``mdm`` and ``arm`` in ``unmask.plugins.objectives``, third
parties through the ``unmask_objectives`` entry-point group) is a class built per task and train section,
``Objective(task, train)``, where ``train`` is the run's ``[train]`` section as a plain dict (a checkpoint's recorded
one when a model is loaded). It says

- what the backbone is built for (:meth:`Objective.model_task`: the task itself, or a Task-like description of
  another sequence layout) and whether it is causal (:attr:`Objective.causal`);
- its data layout (:meth:`Objective.batch`: a batch of task examples as the two arrays its loss reads);
- its loss (:meth:`Objective.loss`, drawing the batches it needs through ``draw``) and any state that must survive
  a resume (:meth:`Objective.state_tensors`, saved pickle-free beside the checkpoint);
- optionally, what one training example costs the backbone (``flops_layout(module, data)`` -> ``(tokens, output
  positions)``, read by :mod:`unmask.core.flops`; without it: the model task's ``seq_len``, logits everywhere);
- what its models decode with (:meth:`Objective.decoders`: decode-loop strategies for an MDM, the greedy
  left-to-right evaluator for an ARM) and the default of ``train.val_strategies``.

Everything else (optimizer, schedule, checkpoints, EMA, validation, evaluation, serving) is the objective's
neither to know nor to repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from unmask.core.errors import ConfigError, InputError, PluginError
from unmask.core.registry import objectives
from unmask.core.task import Dataset, Task

DEFAULT_OBJECTIVE = "mdm"

Draw = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
"""``draw(n)``: ``n`` fresh (augmented) training examples in the objective's layout, on the training device."""


@runtime_checkable
class Decoder(Protocol):
    """A decoder that is not a decode-loop strategy evaluates a dataset itself (the ARM baseline)."""

    name: str

    def evaluate(self, engine: Any, data: Dataset, *, batch_size: int = ..., progress: bool = ...,
                 trace: bool = ...) -> Any: ...


class Objective(Protocol):
    name: ClassVar[str]
    causal: ClassVar[bool]
    """Whether the backbone is built with causal attention."""

    def __init__(self, task: Task, train: Mapping[str, Any]) -> None: ...

    def model_task(self) -> Any:
        """What :func:`unmask.core.models.build_model` builds the backbone for (a Task or Task-like layout)."""
        ...

    def batch(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """The objective's two training arrays of ``data`` (an MDM: targets and given; an ARM: sequence and loss
        mask)."""
        ...

    def loss(self, logits_fn: Any, draw: Draw, batch_size: int, generator: torch.Generator,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one training step (one forward pass of ``logits_fn``) and its logged figures (at least
        ``masked_acc``)."""
        ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Training state beyond weights and optimizer that a resume must restore ({} when there is none)."""
        ...

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def default_decoders(self) -> list[str | dict[str, Any]]:
        """``train.val_strategies`` when the config leaves it empty."""
        ...

    def decoders(self, sections: list[dict[str, Any]], *, steps: int | None = None,
                 where: str = "--strategies") -> list[Any]:
        """What ``sections`` (``{"name": ..., option: value}``) decode with on this objective's models: strategies
        of the decode loop, or :class:`Decoder` objects; ``where`` names them in errors (a config path or flag). A
        decoder another objective owns is an InputError naming what this one decodes with."""
        ...


def objective_name(config: Mapping[str, Any]) -> str:
    """The objective a resolved model config was trained with (``train.objective``; ``mdm`` when absent)."""
    return str((config.get("train") or {}).get("objective", DEFAULT_OBJECTIVE))


def objective_class(name: str, where: str = "train.objective") -> Any:
    try:
        return objectives.get(name)
    except PluginError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_objective(task: Task, train: Mapping[str, Any], where: str = "train.objective") -> Objective:
    """The objective ``train["objective"]`` names, built for ``task`` and that train section."""
    cls = objective_class(str(train.get("objective", DEFAULT_OBJECTIVE)), where)
    obj = cls(task, train)
    for attr in ("model_task", "batch", "loss", "decoders", "default_decoders", "state_tensors",
                 "load_state_tensors"):
        if not callable(getattr(obj, attr, None)):
            raise PluginError(f"objective '{cls.__name__}' ({cls.__module__}) has no method {attr}(); see "
                              "unmask.core.objective.Objective")
    return obj


def model_objective(task: Task, config: Mapping[str, Any]) -> Objective:
    """The objective of a trained model (its recorded ``train`` section)."""
    return build_objective(task, config.get("train") or {}, "the model's train.objective")


def decoders(engine: Any, task: Task, sections: list[str | dict[str, Any]], steps: int | None = None,
             where: str = "--strategies") -> list[Any]:
    """What the model behind ``engine`` decodes ``sections`` with (strategy names or ``{"name": ..., ...}``)."""
    config = getattr(engine, "config", None) or {}
    return model_objective(task, config).decoders(
        [{"name": s} if isinstance(s, str) else dict(s) for s in sections], steps=steps, where=where)


def foreign_decoder(name: str, objective: str, mine: str) -> InputError | None:
    """The error for a decoder ``name`` that another registered objective owns (None when none does)."""
    for other in objectives.names():
        if other != objective and name == other:
            return InputError(f"'{name}' decodes models trained with train.objective = '{other}'; this model was "
                              f"trained with '{objective}': use {mine}")
    return None


__all__ = ["DEFAULT_OBJECTIVE", "Decoder", "Draw", "Objective", "build_objective", "decoders", "foreign_decoder",
           "model_objective", "objective_class", "objective_name"]
