"""Batched evaluation: decode a dataset with one or more strategies and score it with the task."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unmask.core.decoding.loop import decode
from unmask.core.errors import InputError
from unmask.core.strategy import Strategy
from unmask.core.task import Dataset, Task


@dataclass
class EvalResult:
    strategy: str
    n: int
    solved: float
    cell_accuracy: float
    nfe_mean: float
    puzzles_per_s: float
    seconds: float
    per_example: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    predictions: np.ndarray | None = field(default=None, repr=False)
    order: np.ndarray | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_predictions(
        cls, task: Task, data: Dataset, strategy: str, pred: np.ndarray, nfe: np.ndarray, seconds: float,
        order: np.ndarray | None = None, options: dict[str, Any] | None = None,
    ) -> EvalResult:
        """Score decoded sequences (N, L) with the task and summarise them."""
        scores = task.score(pred, data)
        return cls(
            strategy=strategy,
            n=len(data),
            solved=float(np.mean(scores["solved"])),
            cell_accuracy=float(np.mean(scores["cell_accuracy"])),
            nfe_mean=float(nfe.mean()),
            puzzles_per_s=len(data) / max(seconds, 1e-9),
            seconds=seconds,
            per_example={**scores, "nfe": nfe},
            predictions=pred,
            order=order,
            options=options or {},
        )

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "solved": self.solved,
            "cell_accuracy": self.cell_accuracy,
            "nfe_mean": self.nfe_mean,
            "puzzles_per_s": self.puzzles_per_s,
            "n": self.n,
            "seconds": self.seconds,
            "options": self.options,
        }


def _option_text(value: Any) -> str:
    """An option value as ``--strategies NAME:KEY=VALUE`` takes it (``true``, ``0.999``, ``gumbel``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def strategy_label(decoder: Any, keys: Iterable[str] | None = None) -> str:
    """How tables, JSON reports, plots and file names call a decoder: its name, then ``:KEY=VALUE`` for each option
    that differs from the strategy's defaults (``confidence_threshold:tau=0.99``, the form ``--strategies`` takes), in
    the strategy's own option order. ``keys``: consider only these options, in this order (``unmask eval`` passes
    each row's own, as typed, leaving out those given to every strategy with ``--steps`` / ``--opt``: they are the
    same on every row)."""
    name = str(getattr(decoder, "name", "") or type(decoder).__name__)
    options = getattr(decoder, "options", None)
    fields = getattr(type(options), "__struct_fields__", None)
    if options is None or not fields:
        return name
    try:
        defaults = type(options)()
    except Exception:  # noqa: BLE001 - an options class with required fields: every value is the user's
        defaults = None
    parts = []
    for key in fields if keys is None else [k for k in dict.fromkeys(keys) if k in fields]:
        value = getattr(options, key)
        if defaults is None or value != getattr(defaults, key):
            parts.append(f"{key}={_option_text(value)}")
    return ":".join([name, *parts])


def unique_labels(labels: Iterable[str]) -> list[str]:
    """``labels`` with repeats told apart (``margin``, ``margin-2``): two rows never share a name (nor a file)."""
    out: list[str] = []
    for label in labels:
        new, k = label, 2
        while new in out:
            new, k = f"{label}-{k}", k + 1
        out.append(new)
    return out


def label_file_part(label: str) -> str:
    """A strategy label as part of a file name: ``confidence_threshold:tau=0.99`` ->
    ``confidence_threshold-tau=0.99`` (no ``:``, path separators or spaces)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", label.replace(":", "-")) or "strategy"


def evaluate(
    engine: Any,
    task: Task,
    data: Dataset,
    strategy: Strategy,
    *,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    trace: bool = False,
    progress: bool = False,
    scheduler: str = "static",
    retries: int = 0,
    retry_noise: float = 0.1,
) -> EvalResult:
    """Decode ``data`` with ``strategy`` on ``engine`` in batches and score it.

    ``retries`` > 0: rows whose answer the task marks ``invalid`` (its score's verdict without the reference answer:
    the grid breaks the puzzle's rules) are decoded again, up to ``retries`` more times, with Gumbel noise of scale
    ``retry_noise`` on the strategy's scores (a strategy without noise options: its own random draws, from the
    generator's later state); a row keeps its first valid answer, else its first answer. Every attempt's forward
    passes count in the row's NFE, and ``per_example["attempts"]`` counts the decodes. This is a search checked
    against the rules, never against the reference answer."""
    if retries < 0 or not 0 <= retry_noise < float("inf"):
        raise InputError(f"retries must be >= 0 and retry_noise a number >= 0, got {retries} and {retry_noise}")
    if retries > 0 and len(data):
        invalid_rows(task, data.inputs[:1], data.take(slice(0, 1)))  # a task that cannot check: refused before work
    t0 = time.perf_counter()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    name = strategy.name or type(strategy).__name__
    pred, nfe, order = _decode_all(engine, task, data, strategy, gen, batch_size=batch_size, device=device,
                                   trace=trace, progress=progress, scheduler=scheduler, desc=f"eval {name}")
    options = strategy.config_dict()
    extra: dict[str, np.ndarray] = {}
    if retries > 0:
        attempts = np.ones(len(data), np.int64)
        retry = noised(strategy, retry_noise)
        todo = np.flatnonzero(invalid_rows(task, pred, data))
        for _ in range(retries):
            if not len(todo):
                break
            part = data.take(todo)
            p2, n2, o2 = _decode_all(engine, task, part, retry, gen, batch_size=batch_size, device=device,
                                     trace=trace, progress=False, scheduler=scheduler, desc=f"retry {name}")
            attempts[todo] += 1
            nfe[todo] = nfe[todo] + n2
            bad = invalid_rows(task, p2, part)
            pred[todo[~bad]] = p2[~bad]  # a row that never passes keeps its first, noise-free answer
            if order is not None and o2 is not None:
                order[todo[~bad]] = o2[~bad]  # the commit order of the answer kept
            todo = todo[bad]
        options = {**options, "retries": retries, "retry_noise": retry_noise}
        extra["attempts"] = attempts
    seconds = time.perf_counter() - t0
    res = EvalResult.from_predictions(task, data, name, pred, nfe, seconds, order, options)
    res.per_example.update(extra)
    return res


def invalid_rows(task: Task, pred: np.ndarray, data: Dataset) -> np.ndarray:
    """(N,) bool: decoded rows that break the task's rules, judged by its score without the reference answer."""
    scores = task.score(pred, Dataset(data.inputs, data.given, None, data.meta))
    if "invalid" not in scores:
        raise InputError(f"retries need a task that tells a wrong answer without the reference (its score reports "
                         f"'invalid'); task '{getattr(task, 'name', type(task).__name__)}' does not: leave out "
                         "--retries")
    return np.asarray(scores["invalid"], dtype=bool)


def noised(strategy: Strategy, scale: float) -> Strategy:
    """``strategy`` with Gumbel noise of ``scale`` on its scores where it has noise options, else itself."""
    from unmask.core.strategy import build_strategy

    cfg = strategy.config_dict()
    if "noise" not in cfg or scale <= 0:
        return strategy
    return build_strategy({**cfg, "noise": "gumbel", "noise_scale": float(scale)})


def _decode_all(engine: Any, task: Task, data: Dataset, strategy: Strategy, gen: torch.Generator, *,
                batch_size: int, device: str | torch.device, trace: bool, progress: bool, scheduler: str,
                desc: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(predictions (N, L), NFE (N,), commit order or None) of ``data`` decoded in batches."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    preds, nfes, orders = [], [], []
    lengths = data.meta.get("length")  # (N,) real lengths of right-padded rows (text), else None
    if scheduler == "continuous":
        from unmask.core.decoding.schedule import decode_many

        res = decode_many(
            engine, torch.from_numpy(data.inputs), torch.from_numpy(data.given), strategy,
            mask_id=task.mask_id, generator=gen, batch_size=batch_size, trace=trace, progress=progress,
            desc=desc, vocab_size=task.vocab_size,
            lengths=None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64)),
        )
        preds, nfes = [res.tokens.cpu().numpy()], [res.nfe.cpu().numpy()]
        if trace and res.order is not None:
            orders = [res.order.cpu().numpy()]
    else:
        with tqdm(total=len(data), desc=desc, unit="puzzle", disable=not progress, leave=False) as bar:
            for start in range(0, len(data), batch_size):
                sl = slice(start, start + batch_size)
                inputs = torch.from_numpy(data.inputs[sl]).to(device)
                given = torch.from_numpy(data.given[sl]).to(device)
                lens = None if lengths is None else torch.from_numpy(np.asarray(lengths[sl], dtype=np.int64))
                res = decode(engine, inputs, given, strategy, mask_id=task.mask_id, generator=gen, trace=trace,
                             vocab_size=task.vocab_size, lengths=None if lens is None else lens.to(device))
                preds.append(res.tokens.cpu().numpy())
                nfes.append(res.nfe.cpu().numpy())
                if trace and res.order is not None:
                    orders.append(res.order.cpu().numpy())
                bar.update(inputs.shape[0])
    return np.concatenate(preds), np.concatenate(nfes), np.concatenate(orders) if orders else None


def evaluate_with(engine: Any, task: Task, data: Dataset, decoder: Any, *, batch_size: int = 256, seed: int = 0,
                  device: str | torch.device = "cpu", trace: bool = False, progress: bool = False,
                  scheduler: str = "static", retries: int = 0, retry_noise: float = 0.1) -> EvalResult:
    """:func:`evaluate` for a decode-loop strategy; a decoder that evaluates data itself (an objective's own, e.g.
    the ARM baseline's greedy decoding: :class:`unmask.core.objective.Decoder`) does so, without retries."""
    if hasattr(decoder, "evaluate"):
        if retries:
            raise InputError(f"retries apply to the decode loop's strategies; '{decoder.name}' decodes by itself: "
                             "leave out --retries")
        return decoder.evaluate(engine, data, batch_size=batch_size, progress=progress, trace=trace)
    return evaluate(engine, task, data, decoder, batch_size=batch_size, seed=seed, device=device, trace=trace,
                    progress=progress, scheduler=scheduler, retries=retries, retry_noise=retry_noise)
