"""Autoregressive (ARM) baselines: a task's examples as sequences of (row, column, value) triples.

Kim et al. 2025 (Table 2, Table 3, Sec. 5) compare their MDMs with causal transformers trained on Sudoku written as
81 (row, col, value) triples, the givens first, then the empty cells either in the order a step solver fills them
("with ordering") or row-major ("without ordering") (Shah et al. 2024). :class:`ArmLayout` does that for any task:

* the cells are the task's answer grid (:meth:`~unmask.core.task.Task.cell_grid`: ``offset, R, C``); every other
  position is context that each example gives (a Zebra puzzle's clues), read as the plain tokens it holds, in
  sequence order. ``cells = "square"`` (the layout of models trained before the
  grid existed, and of tasks without one) makes every position a cell of a near-square grid (``C = ceil(sqrt(L))``;
  cells of that grid past ``L`` do not exist and are never written), the context included;
* the ARM sequence is ``BOS``, the context tokens, then one triple per cell: the given cells first (row-major), then
  the answer cells in the fill order: ``"solver"`` (``Dataset.meta["order"]``: sequence positions in the order the
  task's solver placed them, -1 padded; answer cells missing from it follow row-major) or ``"row_major"``.
  Length ``1 + context + 3 cells`` (Sudoku: 1 + 243; Zebra, 32 clue slots and a 6 x 6 grid: 1 + 128 + 108; the BOS
  gives the first token something to be predicted from);
* its own vocabulary: the task's token ids ``0..V-1`` as values, then ``R`` row tokens, ``C`` column tokens, BOS;
* training (:func:`arm_loss`) scores only the answer triples, position tokens included: the model
  learns *where* to write next as well as what (with ordering, the solver's order);
* decoding (:meth:`ArmLayout.evaluate`) is greedy with the givens teacher-forced and batched: with a key/value
  cache when the engine has one (``torch`` runtime: one token per row and step), else every step recomputes the
  causal prefix (a row's prediction reads only positions before it, so rows at different offsets share one pass).
  Row and column tokens of cells that are already filled (given or written) are masked out, so every answer cell
  is written exactly once; value tokens are the task's ids except its mask id. The board
  is rebuilt from the triples and scored by the task's own :meth:`score`.

NFE per example = forward passes spent on it = 3 x (number of answer cells).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from unmask.core.errors import ConfigError, InputError, PluginError
from unmask.core.registry import objectives
from unmask.core.task import Dataset, ModelSpec, Task

Order = Literal["solver", "row_major"]
ORDERS = ("solver", "row_major")
CELLS = ("task", "square")
# phase of a sequence position k >= t0 inside its triple (t0: the first triple's position)
ROW, COL, VAL = 0, 1, 2


@dataclass(frozen=True)
class ArmSpecTask:
    """The Task-like description of the ARM sequence a backbone is built for (``build_model`` reads it)."""

    name: str
    vocab_size: int
    seq_len: int
    mask_id: int
    slots: tuple[int, ...] = field(repr=False)

    def structure(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """``slot``: 0 row token, 1 column token, 2 value token, 3 BOS, 4 context token (only in layouts that have
        context) (used by ``positions = "structure"/"both"``)."""
        return {"slot": (max(self.slots) + 1, self.slots)}

    def model_spec(self, causal: bool = True) -> ModelSpec:
        return ModelSpec(self.vocab_size, self.seq_len, self.mask_id, self.structure(), causal)

    def board_shape(self) -> None:
        return None


class ArmLayout:
    """A task's examples as ``BOS, context, (row, col, value) x cells`` sequences, their training loss mask, and greedy
    decoding."""

    def __init__(self, task: Task, order: str = "solver", cells: str = "task") -> None:
        if order not in ORDERS:
            raise ConfigError(f"ARM order '{order}' is unknown; use one of {', '.join(ORDERS)} (train.order)")
        if cells not in CELLS:
            raise ConfigError(f"ARM cells '{cells}' is unknown; use one of {', '.join(CELLS)} (train.arm_cells)")
        self.task = task
        self.order = order
        self.cells = cells
        self.L = int(task.seq_len)
        self.V = int(task.vocab_size)
        grid = task.cell_grid() if cells == "task" else None
        if grid is not None:
            off, R, C = (int(x) for x in grid)
            if min(R, C) < 1 or off < 0 or off + R * C > self.L:
                raise PluginError(f"task '{task.name}' declares a cell grid of {R} x {C} at position {off}, which "
                                  f"does not fit its {self.L} positions (Task.cell_grid)")
            self.offset, self.R, self.C, self.n_cells = off, R, C, R * C
        else:
            shape = task.board_shape()
            if shape is not None and int(shape[0]) * int(shape[1]) == self.L:
                self.R, self.C = int(shape[0]), int(shape[1])
            else:
                self.C = max(1, math.ceil(math.sqrt(self.L)))
                self.R = math.ceil(self.L / self.C)
            self.offset, self.n_cells = 0, self.L
        self.cell_pos = self.offset + np.arange(self.n_cells, dtype=np.int64)  # sequence position of each cell
        self.context = np.setdiff1d(np.arange(self.L, dtype=np.int64), self.cell_pos)  # given in every example
        self.t0 = 1 + len(self.context)  # first triple of the ARM sequence
        self.row0 = self.V
        self.col0 = self.V + self.R
        self.bos = self.V + self.R + self.C
        self.vocab_size = self.bos + 1
        self.seq_len = self.t0 + 3 * self.n_cells

    @classmethod
    def for_task(cls, task: Task, order: str = "solver", cells: str = "task") -> ArmLayout:
        return cls(task, order, cells)

    @classmethod
    def for_config(cls, task: Task, config: dict[str, Any]) -> ArmLayout:
        """The layout a checkpoint was trained with (its ``train.order`` and ``train.arm_cells``; a model saved
        before ``arm_cells`` existed was trained with ``"square"``)."""
        train = config.get("train", {})
        return cls(task, str(train.get("order", "solver")), str(train.get("arm_cells", "square")))

    def spec_task(self) -> ArmSpecTask:
        slots = (3,) + (4,) * len(self.context) + tuple(k % 3 for k in range(3 * self.n_cells))
        return ArmSpecTask(f"arm:{self.task.name}", self.vocab_size, self.seq_len, int(self.task.mask_id), slots)

    def _cells_given(self, data: Dataset) -> np.ndarray:
        """(N, cells) bool: which cells each example gives; refuses data that leaves context positions to fill."""
        given = np.asarray(data.given, dtype=bool)
        if given.ndim != 2 or given.shape[1] != self.L:
            raise InputError(f"data has sequences of shape {given.shape[1:]}; the ARM layout of task "
                             f"'{self.task.name}' expects {self.L} positions")
        if len(self.context) and not given[:, self.context].all():
            raise InputError(f"task '{self.task.name}' leaves positions outside its answer grid to fill, which the "
                             "ARM layout reads as given tokens; train with train.arm_cells = 'square'")
        return given[:, self.cell_pos]

    # -- sequences ------------------------------------------------------------------------------------------------
    def fill_order(self, data: Dataset) -> np.ndarray:
        """(N, cells) int64: every cell once (its index in the grid), given cells first (ascending), then the answer
        cells in this layout's order."""
        given = self._cells_given(data)
        N, L = given.shape
        idx = np.broadcast_to(np.arange(L, dtype=np.int64), (N, L))
        if self.order == "row_major":
            key = np.where(given, idx, L + idx)
        else:
            if "order" not in data.meta:
                raise InputError(
                    f"ARM order 'solver' needs the solver's fill order (Dataset.meta['order']), which this "
                    f"'{self.task.name}' data lacks (augmentation may drop it: set train.augment = false), or use "
                    "train.order = 'row_major'"
                )
            o = np.asarray(data.meta["order"], dtype=np.int64).reshape(N, -1) - self.offset  # cell indices
            K = o.shape[1]
            rank = np.full((N, L), K, dtype=np.int64)
            rows = np.repeat(np.arange(N), K)
            j = np.tile(np.arange(K, dtype=np.int64), N)
            pos = o.reshape(-1)
            ok = (pos >= 0) & (pos < L)
            np.minimum.at(rank, (rows[ok], pos[ok]), j[ok])
            key = np.where(given, idx, np.where(rank < K, L + rank, 2 * L + idx))
        return np.argsort(key, axis=1, kind="stable").astype(np.int64)

    def encode(self, batch: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """``(seq (B, L') int64, loss_mask (B, L') bool)``: the training sequence and which of its tokens are
        scored (the answer triples: row, column and value tokens)."""
        if batch.targets is None:
            raise InputError("ARM training needs targets (the answers)")
        order = self.fill_order(batch)  # (B, cells)
        full = np.where(batch.given, batch.inputs, batch.targets).astype(np.int64)
        seq = self._sequence(order, np.take_along_axis(full[:, self.cell_pos], order, axis=1), full)
        n_given = self.n_cells - (~np.asarray(batch.given, dtype=bool)).sum(axis=1)  # (B,); fill_order checked it
        k = np.arange(self.seq_len)
        loss_mask = k[None, :] >= (self.t0 + 3 * n_given)[:, None]
        return seq, loss_mask

    def _sequence(self, order: np.ndarray, vals: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """``BOS``, the context of ``tokens`` (N, L), then one (row, column, value) triple per cell of ``order``
        (N, cells), with ``vals`` (N, cells)."""
        seq = np.empty((len(order), self.seq_len), dtype=np.int64)
        seq[:, 0] = self.bos
        seq[:, 1 : self.t0] = tokens[:, self.context]
        t = self.t0
        seq[:, t::3] = self.row0 + order // self.C
        seq[:, t + 1 :: 3] = self.col0 + order % self.C
        seq[:, t + 2 :: 3] = vals
        return seq

    def decode_sequences(self, seq: np.ndarray, data: Dataset) -> np.ndarray:
        """(N, L) task tokens from ARM sequences (the inverse of :meth:`encode` on the answer part); cells the
        sequence does not write keep ``data.inputs``."""
        seq = np.asarray(seq, dtype=np.int64)
        pred = np.array(data.inputs, dtype=np.int64, copy=True)
        t = self.t0
        r = seq[:, t::3] - self.row0
        c = seq[:, t + 1 :: 3] - self.col0
        v = seq[:, t + 2 :: 3]
        cell = r * self.C + c
        ok = (r >= 0) & (r < self.R) & (c >= 0) & (c < self.C) & (cell < self.n_cells) & (v >= 0) & (v < self.V)
        ok &= ~np.take_along_axis(self._cells_given(data), np.clip(cell, 0, self.n_cells - 1), axis=1)
        rows = np.broadcast_to(np.arange(len(seq))[:, None], cell.shape)
        pred[rows[ok], self.offset + cell[ok]] = v[ok]
        return pred

    # -- decoding -------------------------------------------------------------------------------------------------
    def _prefix(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (N, L') with BOS, the context, the given triples and BOS filler after them, next position to
        write (N,))."""
        given = self._cells_given(data)
        order = np.argsort(np.where(given, 0, 1), axis=1, kind="stable")  # givens first, ascending
        inputs = np.asarray(data.inputs, dtype=np.int64)
        seq = self._sequence(order, np.take_along_axis(inputs[:, self.cell_pos], order, axis=1), inputs)
        cur = self.t0 + 3 * given.sum(axis=1)
        seq[np.arange(self.seq_len)[None, :] >= cur[:, None]] = self.bos
        return seq, cur.astype(np.int64)

    @torch.inference_mode()
    def decode(self, engine: Any, data: Dataset, *, trace: bool = False, prefix_only: bool | None = None,
               kv_cache: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Greedy decoding of one batch: ``(predictions (B, L), nfe (B,), order (B, L) or None, sequences (B, L'))``.

        ``order`` holds, per position, the forward pass (1-based) whose value token wrote it; 0 = given.
        ``kv_cache``: run the batch position by position with a key/value cache (each step feeds one token per row;
        rows still inside their givens are teacher-forced); default: on when the engine offers it (the ``torch``
        runtime with a causal model). Otherwise every step recomputes the causal prefix, and ``prefix_only`` feeds
        the engine only the columns up to the longest live prefix (same logits for a causal model); default: on for
        eager PyTorch engines (they take any length up to ``seq_len``), off for others (exported engines may fix the
        sequence length).
        """
        if kv_cache is None:
            kv_cache = bool(getattr(engine, "supports_cache", False))
        if prefix_only is None:
            prefix_only = isinstance(getattr(engine, "module", None), torch.nn.Module)
        dev = torch.device(getattr(engine, "device", "cpu"))
        eng_len = getattr(engine, "seq_len", self.seq_len)
        if eng_len is not None and int(eng_len) != self.seq_len:
            raise PluginError(
                f"the engine takes sequences of length {eng_len}, but the ARM layout of task '{self.task.name}' "
                f"has {self.seq_len}; was the model trained with train.objective = 'arm' for this task?"
            )
        seq_np, cur_np = self._prefix(data)
        st = _DecodeState(self, data, seq_np, cur_np, dev, trace)
        end = self.seq_len
        if kv_cache:
            cache = engine.new_cache(st.B)
            p0 = int(st.cur.min()) if st.B else end
            if p0 < end:
                last = self._checked(engine.cached(st.seq[:, :p0], 0, cache), st.B)[:, -1]
            for t in range(p0, end):
                rows = (st.cur <= t).nonzero().squeeze(1)  # rows past their givens generate position t
                if rows.numel():
                    st.write(rows, last[rows.to(last.device)], torch.full_like(rows, t))
                if t + 1 < end:
                    last = self._checked(engine.cached(st.seq[:, t : t + 1], t, cache), st.B)[:, 0]
        else:
            active = (st.cur < end).nonzero().squeeze(1)
            while active.numel() > 0:
                width = int(st.cur[active].max()) if prefix_only else self.seq_len
                logits = self._checked(engine(st.seq[active, :width]), active.numel())  # (Ba, width, V')
                c = st.cur[active]  # (Ba,)
                st.write(active, logits[torch.arange(active.numel(), device=logits.device), (c - 1).to(logits.device)],
                         c)
                st.cur[active] = c + 1
                active = active[c + 1 < end]
        return (st.board.cpu().numpy(), st.nfe.cpu().numpy(), None if st.order is None else st.order.cpu().numpy(),
                st.seq.cpu().numpy())

    def _checked(self, logits: torch.Tensor, rows: int) -> torch.Tensor:
        if logits.ndim != 3 or logits.shape[0] != rows or logits.shape[-1] != self.vocab_size:
            raise PluginError(f"engine returned logits of shape {tuple(logits.shape)}; expected "
                              f"({rows}, <positions>, {self.vocab_size})")
        return logits

    def evaluate(self, engine: Any, data: Dataset, *, batch_size: int = 256, progress: bool = False,
                 trace: bool = False, prefix_only: bool | None = None, **_: Any) -> Any:
        """Greedy decoding of ``data`` in batches, scored by the task: an :class:`~unmask.core.evaluate.EvalResult`
        named ``arm`` (``nfe_mean`` = forward passes per example)."""
        from tqdm.auto import tqdm

        from unmask.core.evaluate import EvalResult

        preds, nfes, orders = [], [], []
        t0 = time.perf_counter()
        with tqdm(total=len(data), desc=f"eval arm ({self.order})", unit="puzzle", disable=not progress,
                  leave=False) as bar:
            for start in range(0, len(data), batch_size):
                part = data.take(slice(start, start + batch_size))
                p, n, o, _seq = self.decode(engine, part, trace=trace, prefix_only=prefix_only)
                preds.append(p)
                nfes.append(n)
                if o is not None:
                    orders.append(o)
                bar.update(len(part))
        seconds = time.perf_counter() - t0
        L = self.L
        pred = np.concatenate(preds) if preds else np.zeros((0, L), np.int64)
        nfe = np.concatenate(nfes) if nfes else np.zeros(0, np.int64)
        scores = self.task.score(pred, data)
        return EvalResult(
            strategy="arm",
            n=len(data),
            solved=float(np.mean(scores["solved"])) if len(data) else 0.0,
            cell_accuracy=float(np.mean(scores["cell_accuracy"])) if len(data) else 0.0,
            nfe_mean=float(nfe.mean()) if len(data) else 0.0,
            puzzles_per_s=len(data) / max(seconds, 1e-9),
            seconds=seconds,
            per_example={**scores, "nfe": nfe},
            predictions=pred,
            order=np.concatenate(orders) if orders else None,
            options={"name": "arm", "order": self.order, "decoding": "greedy"},
        )

    # the strategy-like face used by ``unmask eval --strategies arm``
    @property
    def name(self) -> str:
        return "arm"

    def config_dict(self) -> dict[str, Any]:
        return {"name": "arm", "order": self.order, "decoding": "greedy"}


class _DecodeState:
    """The boards and the next-token rule of greedy ARM decoding: row and column tokens only of free cells, value
    tokens only of the task's values (never its mask id); each value token writes its cell."""

    def __init__(self, lay: ArmLayout, data: Dataset, seq_np: np.ndarray, cur_np: np.ndarray, dev: torch.device,
                 trace: bool) -> None:
        self.lay = lay
        self.B = B = len(seq_np)
        self.dev = dev
        self.seq = torch.from_numpy(seq_np).to(dev)
        self.cur = torch.from_numpy(cur_np).to(dev)
        self.filled = torch.ones(B, lay.R * lay.C, dtype=torch.bool, device=dev)  # grid cells past n_cells: none
        self.filled[:, : lay.n_cells] = torch.from_numpy(lay._cells_given(data)).to(dev)
        self.board = torch.from_numpy(np.asarray(data.inputs, dtype=np.int64).copy()).to(dev)
        self.row = torch.zeros(B, dtype=torch.int64, device=dev)
        self.col = torch.zeros(B, dtype=torch.int64, device=dev)
        self.nfe = torch.zeros(B, dtype=torch.int64, device=dev)
        self.order = torch.zeros(B, lay.L, dtype=torch.int64, device=dev) if trace else None
        self.value_ok = torch.ones(lay.vocab_size, dtype=torch.bool, device=dev)
        self.value_ok[lay.V:] = False
        if 0 <= int(lay.task.mask_id) < lay.V:
            self.value_ok[int(lay.task.mask_id)] = False

    def write(self, rows: torch.Tensor, lg: torch.Tensor, pos: torch.Tensor) -> None:
        """Rows ``rows`` (Ba,) write sequence position ``pos`` (Ba,) from their next-token logits ``lg`` (Ba, V')."""
        lay, dev = self.lay, self.dev
        lg = lg.to(dev).float()
        n = rows.numel()
        phase = (pos - lay.t0) % 3
        free = ~self.filled[rows].view(-1, lay.R, lay.C)  # (Ba, R, C)
        allowed = torch.zeros_like(lg, dtype=torch.bool)
        allowed[:, lay.row0 : lay.row0 + lay.R] = free.any(dim=2) & (phase == ROW)[:, None]
        col_free = free[torch.arange(n, device=dev), self.row[rows]]  # (Ba, C)
        allowed[:, lay.col0 : lay.col0 + lay.C] = col_free & (phase == COL)[:, None]
        allowed |= self.value_ok[None, :] & (phase == VAL)[:, None]
        tok = lg.masked_fill(~allowed, float("-inf")).argmax(dim=1)  # (Ba,)
        self.seq[rows, pos] = tok
        self.nfe[rows] += 1
        is_row, is_col, is_val = phase == ROW, phase == COL, phase == VAL
        self.row[rows] = torch.where(is_row, tok - lay.row0, self.row[rows])
        self.col[rows] = torch.where(is_col, tok - lay.col0, self.col[rows])
        if bool(is_val.any()):
            a = rows[is_val]
            cell = self.row[a] * lay.C + self.col[a]
            self.board[a, lay.offset + cell] = tok[is_val]
            self.filled[a, cell] = True
            if self.order is not None:
                self.order[a, lay.offset + cell] = self.nfe[a]


def arm_loss(logits_fn: Any, seq: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy on the answer part of the sequence (given part teacher-forced, not scored)."""
    logits = logits_fn(seq[:, :-1]).float()  # (B, L-1, V)
    tgt = seq[:, 1:]
    m = loss_mask[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none").view_as(tgt)
    loss = (ce * m).sum() / m.sum().clamp(min=1)
    with torch.no_grad():
        acc = ((logits.argmax(-1) == tgt) & m).sum() / m.sum().clamp(min=1)
    return loss, {"masked_acc": float(acc), "masked_frac": float(m.float().mean())}


@objectives.register("arm")
class ArmObjective:
    """Autoregressive baseline: next-token loss on (row, column, value) triples; decodes greedily (``arm``)."""

    name = "arm"
    causal = True

    def __init__(self, task: Task, train: Mapping[str, Any]) -> None:
        masking = str(train.get("masking", "random"))
        if masking != "random":
            raise ConfigError(f"train.masking = '{masking}' is a masking process of the MDM objective, not of 'arm'; "
                              "set train.masking = 'random' or train.objective = 'mdm'")
        self.layout = ArmLayout.for_config(task, {"train": train})  # new runs get TrainOptions' arm_cells default

    def model_task(self) -> ArmSpecTask:
        return self.layout.spec_task()

    def batch(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        return self.layout.encode(data)

    def flops_layout(self, module: Any, data: Dataset | None) -> tuple[int, float]:
        """What one training example costs the backbone (:mod:`unmask.core.flops`): the ARM sequence minus its last
        token (:func:`arm_loss` predicts each next token), with logits at every position."""
        n = self.layout.seq_len - 1
        return n, float(n)

    def loss(self, logits_fn: Any, draw: Any, batch_size: int, generator: torch.Generator,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return arm_loss(logits_fn, *draw(batch_size))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def default_decoders(self) -> list[str | dict[str, Any]]:
        return ["arm"]

    def decoders(self, sections: list[dict[str, Any]], *, steps: int | None = None,
                 where: str = "--strategies") -> list[ArmLayout]:
        """Greedy decoding, the only decoder of an ARM (``--strategies arm``; it takes no options)."""
        other = [str(s.get("name")) for s in sections if s.get("name") != "arm"]
        if other:
            raise InputError(f"{where}: this model is autoregressive (train.objective = 'arm'); it decodes with "
                             f"'arm' only, not {', '.join(other)}")
        for s in sections:
            extra = sorted(set(s) - {"name", "steps"})
            if extra:
                raise InputError(f"{where}: decoder 'arm' takes no options (got {', '.join(extra)})")
        return [self.layout] * min(1, len(sections))
