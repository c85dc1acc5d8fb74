"""The Python API in one call: :func:`load` a model by name or path, then ``.solve`` puzzles or ``.generate`` text.

``unmask.load`` (also importable as ``unmask.core.api.load``) opens a model the way the command line does: a path
that exists as given, else a model name (a packaged model such as the default one, or one another package ships
through the ``unmask_models`` entry points; :func:`unmask.core.resources.find_model`), the runtime chosen from the
path (a model directory opens with torch, ``.onnx`` with onnxruntime, ``.plan`` with TensorRT) and the CPU threads
the CLI would use (the cores not already busy: :func:`unmask.core.cli.default_threads`)::

    import unmask

    model = unmask.load()                      # the packaged default model; or a name, or a path
    result = model.solve("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79")
    print(result.answer, result.solved, result.nfe)

Results are typed: :class:`Solution` (``answer``, ``solved``, ``valid``, ``nfe``, ``tokens``) and
:class:`Generation` (``text``, ``nfe``, ``tokens``). One input gives one result; a list gives a list. The engine,
the task and the decode loop underneath stay available (``model.engine``, ``model.task``,
:func:`unmask.core.decoding.loop.decode`) for anything this layer does not cover.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from unmask.core.errors import InputError


@dataclass
class Solution:
    """One decoded puzzle (or any example of a task that scores its answers)."""

    answer: str
    """The decoded example as text: its cells in a row where each is one character, else the task's own format."""
    solved: bool
    """The task's verdict: the known solution when there is one, else a valid answer that keeps every given."""
    valid: bool
    """The answer breaks no rule of the task (a full, consistent grid), whether or not it is the solution."""
    nfe: int
    """Forward passes (function evaluations) the example took."""
    tokens: np.ndarray = field(repr=False)
    """(L,) int64: the decoded sequence."""


@dataclass
class Generation:
    """One decoded prompt of a text model."""

    text: str
    """The generated span, cut at the first end-of-text token."""
    nfe: int
    """Forward passes the row took."""
    tokens: np.ndarray = field(repr=False)
    """(L,) int64: the whole decoded row (prompt, generation, padding)."""


def answer_text(task: Any, tokens: np.ndarray, given: np.ndarray) -> str:
    """A decoded example as text for files and results: the task's ``answer`` (text tasks), else its cells joined
    when each is one character (a grid in one line), else ``task.format``."""
    answer = getattr(task, "answer", None)
    if callable(answer):
        return str(answer(tokens, given))
    cells = task.format_cells(tokens)
    if cells is not None and all(len(c) == 1 for c in cells):
        return "".join(cells)
    return str(task.format(tokens))


def strategy_section(strategy: str | Mapping[str, Any], steps: int | None = None,
                     options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A strategy config section from a name, a ``NAME:KEY=VALUE...`` spec (as ``--strategy`` takes) or a dict,
    with ``steps`` and ``options`` on top."""
    if isinstance(strategy, Mapping):
        section = dict(strategy)
        if "name" not in section:
            raise InputError(f"strategy {dict(strategy)!r} has no 'name'; e.g. {{'name': 'margin'}}")
    elif isinstance(strategy, str) and strategy.strip():
        from unmask.core.cli import strategy_specs
        from unmask.core.config import apply_overrides

        specs = strategy_specs(strategy)
        if len(specs) != 1:
            raise InputError(f"strategy {strategy!r}: give one strategy, e.g. 'margin' or "
                             "'confidence_threshold:tau=0.99'")
        name, own = specs[0]
        section = {"name": name, **apply_overrides({}, [f"s.{o}" for o in own]).get("s", {})}
    else:
        raise InputError(f"strategy must be a name such as 'margin' or a dict, got {strategy!r}")
    if steps is not None:
        section["steps"] = steps
    section.update(options or {})
    return section


class Model:
    """A model opened by :func:`load`: its engine, its task, and decoding with the CLI's defaults."""

    def __init__(self, engine: Any, task: Any, *, name: str, path: Path, runtime: str) -> None:
        self.engine = engine
        self.task = task
        self.name = name
        """The model as the caller named it (a model name, or the path as given)."""
        self.path = path
        """Where the model lies."""
        self.runtime = runtime
        """The runtime that opened it (torch, onnxruntime, tensorrt, ...)."""

    def __repr__(self) -> str:
        return f"Model({self.name!r}, task={self.task.name!r}, runtime={self.runtime!r})"

    def _decoder(self, strategy: str | Mapping[str, Any], steps: int | None, options: Mapping[str, Any]) -> Any:
        from unmask.core.objective import decoders

        section = strategy_section(strategy, steps, options)
        return decoders(self.engine, self.task, [section], where="strategy")[0]

    def _data(self, inputs: Any) -> tuple[Any, bool]:
        """(dataset, one input given): text is parsed with the task, a list of texts is one batch."""
        from unmask.core.task import Dataset

        if isinstance(inputs, Dataset):
            return inputs, False
        if isinstance(inputs, str):
            return self.task.parse(inputs), True
        if isinstance(inputs, Sequence) and inputs and all(isinstance(x, str) for x in inputs):
            parts = []
            for i, text in enumerate(inputs):
                try:
                    parts.append(self.task.parse(text))
                except InputError as exc:
                    raise InputError(f"input {i + 1}: {exc}") from None
            return _concat(parts), False
        raise InputError(f"expected a puzzle as text, a list of them or a Dataset, got {type(inputs).__name__}"
                         + (" (empty)" if isinstance(inputs, Sequence) and not inputs else ""))

    @overload
    def solve(self, puzzles: str, strategy: str | Mapping[str, Any] = ..., steps: int | None = ..., *,
              seed: int = ..., batch_size: int = ..., retries: int = ..., retry_noise: float = ...,
              **options: Any) -> Solution: ...

    @overload
    def solve(self, puzzles: Sequence[str] | Any, strategy: str | Mapping[str, Any] = ..., steps: int | None = ...,
              *, seed: int = ..., batch_size: int = ..., retries: int = ..., retry_noise: float = ...,
              **options: Any) -> list[Solution]: ...

    def solve(self, puzzles: Any, strategy: str | Mapping[str, Any] = "margin", steps: int | None = None, *,
              seed: int = 0, batch_size: int = 256, retries: int = 0, retry_noise: float = 0.1,
              **options: Any) -> Solution | list[Solution]:
        """Decode puzzles: one as text (the task's input format, as ``unmask solve`` takes it) gives a
        :class:`Solution`; a list of them, or a :class:`unmask.core.task.Dataset` (``task.generate``,
        ``task.read_file``), gives a list.

        ``strategy``: a name (``"margin"``), ``"NAME:KEY=VALUE..."`` or a config dict; ``steps``: the step budget T
        (default: the strategy's, 50); ``options``: strategy options (``noise="gumbel"``, ``noise_scale=0.5``);
        ``retries``: decode an answer that breaks the puzzle's rules again, up to this many more times, with Gumbel
        noise of ``retry_noise`` on the scores (:func:`unmask.core.evaluate.evaluate`).
        """
        from unmask.core.evaluate import evaluate_with

        data, one = self._data(puzzles)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        decoder = self._decoder(strategy, steps, options)
        res = evaluate_with(self.engine, self.task, data, decoder, batch_size=batch_size, seed=seed,
                            device=getattr(self.engine, "device", "cpu"), retries=retries, retry_noise=retry_noise)
        pred = res.predictions
        assert pred is not None  # evaluate keeps the predictions
        scores = res.per_example
        solved = np.asarray(scores["solved"])
        invalid = np.asarray(scores.get("invalid", np.zeros(len(data), dtype=bool)))
        out = [Solution(answer_text(self.task, pred[i], data.given[i]),
                        bool(solved[i] >= 1.0) if solved.dtype.kind == "f" else bool(solved[i]),
                        not bool(invalid[i]), int(scores["nfe"][i]), pred[i])
               for i in range(len(data))]
        return out[0] if one else out

    @overload
    def generate(self, prompts: str | Mapping[str, Any], strategy: str | Mapping[str, Any] = ...,
                 steps: int | None = ..., *, gen_length: int | None = ..., block_length: int = ...,
                 cfg: float = ..., seed: int = ..., batch_size: int = ..., **options: Any) -> Generation: ...

    @overload
    def generate(self, prompts: Sequence[str | Mapping[str, Any]], strategy: str | Mapping[str, Any] = ...,
                 steps: int | None = ..., *, gen_length: int | None = ..., block_length: int = ...,
                 cfg: float = ..., seed: int = ..., batch_size: int = ..., **options: Any) -> list[Generation]: ...

    def generate(self, prompts: Any, strategy: str | Mapping[str, Any] = "top_prob", steps: int | None = None, *,
                 gen_length: int | None = None, block_length: int = 0, cfg: float = 0.0, seed: int = 0,
                 batch_size: int = 16, **options: Any) -> Generation | list[Generation]:
        """Decode prompts with a text model (as ``unmask generate`` does): a prompt, or ``{"prompt": ...}`` /
        ``{"prefix": ..., "suffix": ...}`` (infilling, optional ``"gen_length"``), gives a :class:`Generation`; a
        list of them gives a list, decoded together (prompts of different lengths in one batch).

        ``gen_length``: tokens to generate (default: the task's); ``steps``: the forward-pass budget (default: one
        token per pass); ``block_length``: LLaDA's semi-autoregressive blocks, each given an even share of the
        steps; ``cfg``: classifier-free guidance scale (0 = off); ``options``: strategy options.
        """
        import torch

        from unmask.core.decoding.schedule import decode_many
        from unmask.core.strategy import build_strategy

        rows = getattr(self.task, "rows", None)
        if not callable(rows) or not callable(getattr(self.task, "answer", None)):
            raise InputError(f"model '{self.name}' decodes task '{self.task.name}', not text; use .solve()")
        one = isinstance(prompts, (str, Mapping))
        items = [prompts] if one else list(prompts) if isinstance(prompts, Sequence) else None
        if not items:
            raise InputError("expected a prompt, a {'prompt': ...} dict or a list of them, got "
                             f"{type(prompts).__name__}" + (" (empty)" if items == [] else ""))
        examples = []
        for i, p in enumerate(items):
            ex = {"prompt": p} if isinstance(p, str) else dict(p) if isinstance(p, Mapping) else None
            if ex is None:
                raise InputError(f"prompt {i + 1}: expected text or a dict, got {type(p).__name__}")
            if gen_length is not None:
                ex.setdefault("gen_length", gen_length)
            examples.append(ex)
        for label, value, low in (("steps", steps, 1), ("block_length", block_length, 0),
                                  ("batch_size", batch_size, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"{label} must be an integer >= {low}, got {value!r}")
        data = rows(examples, "prompts")
        gen = (~data.given).sum(axis=1)  # (N,) positions to generate per row
        budget = steps or int(gen.max())
        if block_length and int((-(-gen // block_length)).max()) > budget:
            raise InputError(f"steps={budget} is fewer than the blocks of block_length={block_length}; give at least "
                             "one step per block")
        section = strategy_section(strategy, budget, options)
        if block_length:
            section = {"block_size": block_length, "block_steps": "even", **section}
        decoder = build_strategy(section, "strategy")
        engine = self.engine
        if cfg:
            from unmask.core.engine import GuidanceEngine

            engine = GuidanceEngine(engine, cfg, self.task.mask_id)
        res = decode_many(engine, torch.from_numpy(data.inputs), torch.from_numpy(data.given), decoder,
                          mask_id=self.task.mask_id, generator=torch.Generator().manual_seed(seed),
                          batch_size=batch_size, lengths=torch.from_numpy(np.asarray(data.meta["length"])))
        tokens, nfe = res.tokens.numpy(), res.nfe.numpy()
        out = [Generation(self.task.answer(tokens[i], data.given[i]), int(nfe[i]), tokens[i])
               for i in range(len(data))]
        return out[0] if one else out


def _concat(parts: list[Any]) -> Any:
    """One dataset from single-example datasets whose meta keys may differ (only shared keys are kept)."""
    from unmask.core.task import Dataset

    keys = set(parts[0].meta).intersection(*(p.meta for p in parts[1:]))
    # a known solution for every puzzle, or none: a mix is scored by the rules (a valid answer keeping the givens)
    targets = None if any(p.targets is None for p in parts) else np.concatenate([p.targets for p in parts])
    return Dataset(np.concatenate([p.inputs for p in parts]), np.concatenate([p.given for p in parts]), targets,
                   {k: np.concatenate([p.meta[k] for p in parts]) for k in keys})


def load(model: str | os.PathLike | None = None, *, runtime: str | None = None, device: str | None = None,
         threads: int | None = None, **options: Any) -> Model:
    """Open a model by name or path, with the command line's defaults.

    ``model``: a path that exists (model or run directory, ``.onnx``, ``.plan``), else a model name (``unmask list
    models``); ``None``: the packaged default model. ``runtime``: default from the path. ``threads``: CPU threads
    (default: the cores not already busy, as the CLI). ``options``: further options of the runtime, e.g.
    ``bf16=True``, ``compile=True``, ``micro_batch=16``; for a Hugging Face text model, ``model=[
    "backbone.trust_remote_code=true", "task.chat=true"]`` (its config settings).
    """
    from unmask.core.cli import default_threads
    from unmask.core.decoding.runtime import open_engine, runtime_for_path
    from unmask.core.registry import runtimes
    from unmask.core.resources import engine_task, find_model, model_label

    path = find_model(model)
    name = model_label(model)
    runtime = runtime or runtime_for_path(path)
    fields = set(getattr(getattr(runtimes.get(runtime), "Options", None), "__struct_fields__", ()))
    given = {"device": device, "threads": threads, **options}
    for key, value in given.items():
        if value is not None and key not in fields:
            raise InputError(f"runtime '{runtime}' (model '{name}') has no option '{key}'; its options: "
                             f"{', '.join(sorted(fields)) or 'none'}")
    opts = {k: v for k, v in given.items() if v is not None}
    if "threads" in fields and "threads" not in opts:
        opts["threads"] = default_threads("api")
    engine = open_engine(path, runtime, **opts)
    task = engine_task(engine, path)
    return Model(engine, task, name=name, path=Path(path), runtime=runtime)


__all__ = ["Generation", "Model", "Solution", "answer_text", "load", "strategy_section"]
