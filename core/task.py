"""The task contract: vocabulary and special ids, sequence layout, data, parsing and scoring.

A task owns everything problem-specific (the mask id lives here, never in core). Tasks are plugins registered in
``unmask.core.registry.tasks``; their options are a ``msgspec.Struct`` named ``Options``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from unmask.core.config import NoOptions, Section
from unmask.core.errors import InputError

SPLITS = ("train", "test", "hard")


@dataclass
class Dataset:
    """A batch of examples as numpy arrays.

    ``inputs``  (N, L) int64: the sequence to decode; unknown positions hold the task's mask id.
    ``given``   (N, L) bool: positions that are part of the prompt and must never change.
    ``targets`` (N, L) int64 or None: the reference answer (None when the task has no single answer).
    ``meta``    extra per-example arrays (N, ...) such as clue counts or a solver order.
    """

    inputs: np.ndarray
    given: np.ndarray
    targets: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.inputs.ndim == 2 and self.inputs.shape == self.given.shape, (self.inputs.shape, self.given.shape)
        assert self.targets is None or self.targets.shape == self.inputs.shape

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def take(self, idx: Any) -> Dataset:
        return Dataset(
            self.inputs[idx],
            self.given[idx],
            None if self.targets is None else self.targets[idx],
            {k: v[idx] for k, v in self.meta.items()},
        )

    @staticmethod
    def concat(parts: list[Dataset]) -> Dataset:
        assert parts
        return Dataset(
            np.concatenate([p.inputs for p in parts]),
            np.concatenate([p.given for p in parts]),
            None if parts[0].targets is None else np.concatenate([p.targets for p in parts]),
            {k: np.concatenate([p.meta[k] for p in parts]) for k in parts[0].meta},
        )


@dataclass(frozen=True)
class ModelSpec:
    """What a backbone needs to know about the task: sizes and optional per-position structure ids.

    ``structure`` maps a feature name (e.g. ``row``) to ``(num_classes, ids)`` with ``ids`` of length ``seq_len``;
    a backbone may embed these (Sudoku: row, column and box of each cell).

    ``relations`` maps a relation name (e.g. ``peer``) to ``(queries, keys)``, two equally long position tuples: the
    pairs ``(queries[n], keys[n])`` are related, query attending to key (L&O-NAE-SAT: an observation to its three
    latents). A backbone may bias its attention along them (the transformer's ``relation_bias``).

    ``token_relations`` are relations that depend on the tokens: a relation name maps to ``(n_tags, tags)`` with
    ``tags`` of length ``seq_len * vocab_size``; position ``i`` holding token ``t`` gets tag ``tags[i * vocab_size +
    t]`` (-1: none), and two positions with the same tag are related, both ways (Zebra: a clue naming an item and
    the answer cell holding that item).
    """

    vocab_size: int
    seq_len: int
    mask_id: int
    structure: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    causal: bool = False
    relations: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    token_relations: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


class Task:
    """Base class of tasks. Subclasses set ``Options`` and implement the abstract methods."""

    Options: ClassVar[type[Section]] = NoOptions
    name: ClassVar[str] = ""

    def __init__(self, options: Section | None = None) -> None:
        self.options = options if options is not None else self.Options()

    # -- layout -------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def mask_id(self) -> int:
        raise NotImplementedError

    def structure(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {}

    def relations(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Named sets of related position pairs ``(queries, keys)`` (see :class:`ModelSpec`); default none."""
        return {}

    def token_relations(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Named relations given by equal per-(position, token) tags ``(n_tags, tags)`` (see :class:`ModelSpec`);
        default none."""
        return {}

    def model_spec(self, causal: bool = False) -> ModelSpec:
        return ModelSpec(self.vocab_size, self.seq_len, self.mask_id, self.structure(), causal, self.relations(),
                         self.token_relations())

    # -- data ---------------------------------------------------------------------------------------------------
    def generate(self, split: str, n: int, seed: int, *, progress: bool = False) -> Dataset:
        raise NotImplementedError

    def augment(self, batch: Dataset, rng: np.random.Generator) -> Dataset:
        """A random symmetry of each example (default: none)."""
        return batch

    def read_file(self, path: str) -> Dataset:
        raise InputError(f"task '{self.name}' cannot read data files")

    def parse(self, text: str) -> Dataset:
        """One user-supplied example; malformed input raises :class:`InputError` with a one-line message."""
        raise InputError(f"task '{self.name}' does not parse user input")

    def format(self, tokens: np.ndarray) -> str:
        return " ".join(str(int(t)) for t in tokens)

    def explain(self, tokens: np.ndarray, data: Dataset) -> list[str]:
        """Why one decoded example (``tokens`` (L,), ``data`` of one row) is wrong, as lines a person can act on
        (``unmask solve`` prints them on failure); default: nothing to add."""
        return []

    def format_cells(self, tokens: np.ndarray) -> list[str] | None:
        """One short label per position (e.g. a Sudoku digit) for plots of a board; default: none."""
        return None

    def board_shape(self) -> tuple[int, int] | None:
        """(rows, cols) when positions form a 2-D board worth plotting (commit-order heat maps); else None."""
        return None

    def cell_grid(self) -> tuple[int, int, int] | None:
        """``(offset, rows, cols)`` when positions ``offset .. offset + rows * cols - 1`` are the cells of a
        rows x cols grid (row-major) that holds the answer, every other position being given in every example (a
        Zebra puzzle's clues); None when there is no such grid. The autoregressive baselines write the grid as
        (row, column, value) triples and read the other positions as plain tokens. Default: the
        :meth:`board_shape` when it covers the whole sequence."""
        shape = self.board_shape()
        if shape is not None and int(shape[0]) * int(shape[1]) == int(self.seq_len):
            return 0, int(shape[0]), int(shape[1])
        return None

    # -- scoring ------------------------------------------------------------------------------------------------
    def score(self, predictions: np.ndarray, data: Dataset) -> dict[str, np.ndarray]:
        """Per-example metrics for decoded sequences (N, L): at least ``solved`` and ``cell_accuracy``.

        ``solved`` is a bool per example, or a fraction in [0, 1] for tasks scored by degree (L&O-NAE-SAT); reports
        average it either way.
        """
        raise NotImplementedError

    def groups(self, data: Dataset) -> dict[str, np.ndarray]:
        """Per-example group labels (name -> (N,) array of ints or strings) that evaluation reports break % solved
        down by (``by_<name>`` in an eval JSON). Default: the clue count where the data carries one."""
        return {"clues": data.meta["clues"]} if "clues" in data.meta else {}

    def diagnostics(self, engine: Any, n: int, seed: int) -> dict[str, float]:
        """Probes of what a trained model has learned, beyond the decoded score (e.g. L&O-NAE-SAT: is each observation
        predicted right when all latents are shown?). ``engine`` maps tokens (B, L) int64 to logits (B, L, V).
        Named values in [0, 1]; none by default."""
        return {}

    def model_files(self) -> dict[str, bytes]:
        """Files this task needs stored beside a model's weights (a text task: its tokenizer), written into every
        checkpoint and model directory; default none."""
        return {}

    def bind_model_dir(self, path: Any) -> None:
        """Called when the task is rebuilt from the model directory ``path``, where its :meth:`model_files` lie;
        default: nothing to do."""

    def check_split(self, split: str, n: int | None = None) -> None:
        """``split`` must be one of SPLITS and ``n`` (when given) a count >= 0: one-line errors."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise InputError(f"the number of examples to generate must be an integer >= 0, got {n!r}")
        if split not in SPLITS:
            raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")

    def config_dict(self) -> dict[str, Any]:
        from unmask.core.config import plugin_section

        return plugin_section(self.name, self.options)


def build_task(name_or_section: Any, path: str = "task", *, model: Any = None) -> Task:
    """A task from its name or config section (``{"name": ..., **options}``); ``model``: the model directory (or
    run directory) it comes from, where the task's :meth:`Task.model_files` lie (a text model's tokenizer)."""
    from pathlib import Path

    from unmask.core.config import resolve_plugin
    from unmask.core.registry import tasks

    name, cls, options = resolve_plugin(tasks, name_or_section, path)
    task = cls(options)
    if model is not None and Path(model).is_dir():
        from unmask.core.training.checkpoint import latest_checkpoint

        p = Path(model)
        if not (p / "config.json").is_file():
            p = latest_checkpoint(p) or p
        task.bind_model_dir(p)
    return task
