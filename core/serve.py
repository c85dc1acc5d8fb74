"""``unmask serve``: an HTTP front end that feeds the continuous scheduler's slot table as a stream.

Like the CLI, the server is a front end: it parses each request with the model's task (``task.parse``), hands the
rows to ONE decode worker thread and scores the finished rows with the task (``task.score``); it knows no task by
name. The worker drives :class:`unmask.core.decoding.schedule.SlotTable`, the same table :func:`decode_many` uses:

* ``continuous`` (default): a request's rows join the table at the next step (as many as there are free slots)
  and each request is answered the moment its last row finishes;
* ``static`` (for comparison, ``bench/serve.py``): collect up to ``max_batch`` rows or wait ``static_wait_ms``
  from the oldest queued row, decode that batch to completion (rows still leave as they finish), then take the
  next batch. Requests that arrive meanwhile wait for the whole batch (head-of-line blocking).

For a deterministic strategy a row's answer does not depend on the other rows in the table (up to the engine's
floating-point summation order), so it equals ``unmask solve``'s. A random strategy draws from the server's
generator batch-wise; a request with a ``seed`` is then decoded in a private one-request table with its own
generator, so it equals ``unmask solve --seed``.

Errors: malformed JSON, unknown fields, wrong types, an input the task refuses -> 400; a browser request from
another origin (``Origin`` not this server) -> 403; a body not received within ``read_timeout`` -> 408 (a request
head not received within it: the connection is closed); a body over the size limit -> 413; a client that hangs up
-> 499 (metrics only); a full queue -> 503 with ``Retry-After`` (the queue is bounded in rows); a request that
outlives ``request_timeout`` -> 504, or ``shutdown_timeout`` -> 503; a failing engine or strategy step, or a row
whose given cells came back changed, -> 500 for the requests concerned, and the worker goes on. Every error body is
``{"error": "<one line>"}``. A request whose client disconnects is dropped from the queue or the table at the next
step. SIGTERM / SIGINT: stop accepting, finish the requests in flight (bounded by ``shutdown_timeout``), exit 0.

Starlette, uvicorn and prometheus-client are the ``serve`` extra (``pip install -e ".[serve]"``); they are imported
only here, so ``import unmask.core`` stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import numpy as np
import torch

from unmask.core.decoding.loop import check_strategy, engine_vocab
from unmask.core.decoding.schedule import SlotTable
from unmask.core.errors import InputError, UnmaskError
from unmask.core.strategy import Strategy
from unmask.core.task import Dataset, Task

log = logging.getLogger("unmask.serve")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)


# -- requests -------------------------------------------------------------------------------------------------------
class SolveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``{"input": "..."}`` or ``{"inputs": ["...", ...]}``; optional ``seed`` and ``trace``."""

    input: str | None = None
    inputs: list[str] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    trace: bool = False
    strategy: str | dict[str, Any] | None = None
    """This request's strategy (a name, ``"name:key=value"`` or an object of options); default: the server's."""
    steps: int | None = None
    """This request's step budget (at most the server's ``--max-steps``)."""


@dataclass
class ServeOptions:
    max_batch: int = 256  # slot table rows (capped by the engine's max_batch)
    max_queue: int = 1024  # rows waiting for a slot; beyond this: 503
    max_inputs: int = 256  # inputs in one batch request
    max_body: int = 1 << 20  # bytes
    request_timeout: float = 300.0  # seconds from arrival to answer; then 504
    scheduler: str = "continuous"  # or "static"
    static_wait_ms: float = 50.0
    seed: int = 0  # the server generator's seed (random strategies)
    retry_after: int = 1  # seconds, on 503
    read_timeout: float = 30.0  # seconds a client has to send its request headers, and again its body; then closed
    max_steps: int = 1024  # a request's step budget (per-request strategies)
    max_tokens: int = 512  # tokens a text request may generate per choice


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class Job:
    """One HTTP request: its parsed rows and, once decoded, their tokens / NFE / order."""

    data: Dataset
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    seed: int | None = None
    strategy: Strategy | None = None  # the request's own (None: the server's)
    t0: float = field(default_factory=time.perf_counter)
    tokens: np.ndarray = field(init=False)  # (n, L), set by __post_init__ (the inputs until decoded)
    nfe: np.ndarray = field(init=False)  # (n,)
    order: np.ndarray = field(init=False)  # (n, L)
    remaining: int = 0
    cancelled: bool = False
    error: str | None = None
    ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n, L = self.data.inputs.shape
        self.tokens = self.data.inputs.copy()
        self.nfe = np.zeros(n, dtype=np.int64)
        self.order = np.zeros((n, L), dtype=np.int64)


class Metrics:
    """Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("unmask_requests", "HTTP requests answered, by status code", ["status"], registry=r)
        self.queue = Gauge("unmask_queue_depth", "rows waiting for a slot", registry=r)
        self.slots = Gauge("unmask_slots_occupied", "live rows in the slot table", registry=r)
        self.capacity = Gauge("unmask_slots_capacity", "rows in the slot table", registry=r)
        self.forward = Counter("unmask_forward_passes", "engine calls", registry=r)
        self.rows = Counter("unmask_row_forward_passes", "rows sent to the engine, summed over engine calls",
                            registry=r)
        self.latency = Histogram("unmask_request_latency_seconds", "arrival to answer of answered solve requests",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Counter("unmask_worker_step_seconds", "worker time in engine calls and strategy steps",
                                    registry=r)
        self.busy_seconds = Counter("unmask_worker_busy_seconds", "worker time not spent waiting for work",
                                    registry=r)
        self.cancelled = Counter("unmask_cancelled_rows", "rows dropped because their client went away or timed out",
                                 registry=r)
        self.engine_errors = Counter("unmask_engine_errors", "steps that failed (their requests got 500)", registry=r)


# -- the decode worker ----------------------------------------------------------------------------------------------
class Worker(threading.Thread):
    """The one decode worker: a slot table fed from a bounded row queue."""

    def __init__(self, engine: Any, task: Task, strategy: Strategy, options: ServeOptions, metrics: Metrics) -> None:
        super().__init__(name="unmask-decode", daemon=True)
        from unmask.core.decoding.mixed import MixedStrategies

        self.engine, self.task, self.opts, self.m = engine, task, options, metrics
        self.default = strategy
        # every row decodes with its request's strategy and step budget, all in one engine call per step
        self.strategy = self.mixed = MixedStrategies(strategy, max_steps=max(options.max_steps, strategy.steps))
        cap = options.max_batch
        max_batch = getattr(engine, "max_batch", None)
        if isinstance(max_batch, int) and max_batch > 0:
            cap = min(cap, max_batch)
        dev = getattr(engine, "device", None)
        self.device = dev if isinstance(dev, torch.device) else torch.device("cpu")
        self.L = int(task.seq_len)
        self.table = SlotTable(cap, self.L, device=self.device, trace=True)
        self.generator = torch.Generator(device="cpu").manual_seed(options.seed)
        self.private: list[tuple[SlotTable, torch.Generator]] = []  # seeded requests of a random strategy
        self.steps = check_strategy(self.mixed)
        self.vocab_size = engine_vocab(engine, None)
        self.cv = threading.Condition()
        self.pending: collections.deque[tuple[int, Job, int]] = collections.deque()  # (row id, job, row index)
        self.rows: dict[int, tuple[Job, int]] = {}  # row id -> (job, index) for rows in the queue or a table
        self.next_id = 0
        self.cancels: list[Job] = []
        self.new_private: list[Job] = []  # seeded jobs of a random strategy, for the worker to give a table each
        self._idle = 0.0
        self.stopping = False
        self.stats = {"steps": 0, "rows": 0, "step_seconds": 0.0, "busy_seconds": 0.0, "errors": 0}
        metrics.capacity.set(cap)

    # called from the event loop ----------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job's rows, or finish it at once when it has nothing to decode; raises QueueFull / ShuttingDown."""
        masked = (job.data.inputs == self.task.mask_id) & ~job.data.given  # (k, L)
        todo = [i for i in range(len(job.data)) if masked[i].any()]
        with self.cv:
            if self.stopping:
                raise ShuttingDown()
            if not todo:
                job.future.set_result(job)
                return
            private = job.seed is not None and not (job.strategy or self.default).deterministic
            if len(self.pending) + sum(len(j.ids) for j in self.new_private) + len(todo) > self.opts.max_queue:
                raise QueueFull()
            job.remaining = len(todo)
            for i in todo:
                rid = self.next_id
                self.next_id += 1
                job.ids.append(rid)
                self.rows[rid] = (job, i)
            if job.strategy is not None:
                self.mixed.assign(job.ids, job.strategy)
            for rid in job.ids:
                i = self.rows[rid][1]
                if not private:
                    self.pending.append((rid, job, i))
            if private:
                self.new_private.append(job)
            self.m.queue.set(len(self.pending))
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        """The job's client went away (or it timed out): drop its rows at the next step."""
        with self.cv:
            if job.cancelled:
                return
            job.cancelled = True
            self.cancels.append(job)
            self.cv.notify()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()

    # the worker thread --------------------------------------------------------------------------------------------
    def _admit(self, table: SlotTable, rows: list[tuple[int, Job, int]]) -> None:
        if not rows:
            return
        # rows narrower than the table (text: each request is as wide as its longest row) are right-padded, given
        pad = int(getattr(self.task, "pad_id", 0))
        tok = np.full((len(rows), self.L), pad, dtype=np.int64)
        giv = np.ones((len(rows), self.L), dtype=bool)
        lens = np.full(len(rows), self.L, dtype=np.int64)
        for k, (_, job, i) in enumerate(rows):
            w = job.data.inputs.shape[1]
            tok[k, :w], giv[k, :w] = job.data.inputs[i], job.data.given[i]
            if "length" in job.data.meta:
                lens[k] = int(job.data.meta["length"][i])
        t = torch.from_numpy(tok).to(self.device)
        g = torch.from_numpy(giv).to(self.device)
        ids = torch.tensor([rid for rid, _, _ in rows], dtype=torch.int64, device=self.device)
        table.admit(t, (t == self.task.mask_id) & ~g, g, ids,
                    None if bool((lens == self.L).all()) else torch.from_numpy(lens).to(self.device))

    def _take(self) -> list[tuple[int, Job, int]] | None:
        """Under the lock: the rows to admit now ([] = none, step what is live), or None when the worker should exit.

        Waits (idle) while there is nothing to do."""
        table, W = self.table, self.opts.static_wait_ms / 1000
        while True:
            if self.new_private:
                for job in self.new_private:
                    t = SlotTable(len(job.ids), self.L, device=self.device, trace=True)
                    self._admit(t, [(rid, job, self.rows[rid][1]) for rid in job.ids if rid in self.rows])
                    assert job.seed is not None  # only seeded jobs get a private table
                    self.private.append((t, torch.Generator(device="cpu").manual_seed(int(job.seed))))
                self.new_private = []
            live = table.n > 0 or bool(self.private)
            ready = bool(self.pending) and table.free > 0
            wait = 0.5
            if ready and self.opts.scheduler == "static":
                if table.n > 0:  # a static batch runs to completion before the next one starts
                    ready = False
                elif len(self.pending) < table.capacity and not self.stopping:
                    left = self.pending[0][1].t0 + W - time.perf_counter()
                    if left > 0:
                        ready, wait = False, left
            if ready:
                out: list[tuple[int, Job, int]] = []
                while self.pending and len(out) < table.free:
                    out.append(self.pending.popleft())
                self.m.queue.set(len(self.pending))
                return out
            if live or self.cancels:
                return []
            if self.stopping and not self.pending:
                return None
            t_idle = time.perf_counter()
            self.cv.wait(wait)
            self._idle += time.perf_counter() - t_idle

    def run(self) -> None:
        t_start = time.perf_counter()
        while True:
            with self.cv:
                rows = self._take()
                if rows is None:
                    break
                cancels, self.cancels = self.cancels, []
            try:
                if cancels:
                    self._drop(cancels)
                self._admit(self.table, [r for r in rows if not r[1].cancelled])
            except Exception as exc:  # noqa: BLE001 - never let the worker die: fail what it held, go on
                msg = " ".join(f"decode worker error: {type(exc).__name__}: {exc}".split())
                log.exception("decode worker error")
                for rid in [r[0] for r in rows] + self.table.clear().tolist():
                    self._fail(rid, msg)
            for table, gen in [(self.table, self.generator), *self.private]:
                self._step(table, gen)
            self.private = [(t, g) for t, g in self.private if t.n > 0]
            self.m.slots.set(self.table.n + sum(t.n for t, _ in self.private))
            busy = time.perf_counter() - t_start - self._idle
            self.m.busy_seconds.inc(max(0.0, busy - self.stats["busy_seconds"]))
            self.stats["busy_seconds"] = busy

    def _step(self, table: SlotTable, gen: torch.Generator) -> None:
        n = table.n
        if n == 0:
            return
        t0 = time.perf_counter()
        try:
            fin = table.step(self.engine, self.strategy, gen, mask_id=self.task.mask_id, steps=self.steps,
                             vocab_size=self.vocab_size)
        except Exception as exc:  # noqa: BLE001 - an engine or plugin failure must not stop the server
            ids = table.clear().tolist()
            msg = " ".join(f"decode step failed: {type(exc).__name__}: {exc}".split())
            log.error("%s (%d rows failed)", msg, len(ids))
            self.stats["errors"] += 1
            self.m.engine_errors.inc()
            for rid in ids:
                self._fail(rid, msg)
            return
        dt = time.perf_counter() - t0
        self.stats["steps"] += 1
        self.stats["rows"] += n
        self.stats["step_seconds"] += dt
        self.m.forward.inc()
        self.m.rows.inc(n)
        self.m.step_seconds.inc(dt)
        if fin is None:
            return
        tok = fin.tokens.cpu().numpy()
        nfe = fin.nfe.cpu().numpy()
        order = fin.order.cpu().numpy() if fin.order is not None else None
        for j, rid in enumerate(fin.ids.tolist()):
            entry = self.rows.get(rid)
            if entry is None:
                continue
            job, i = entry
            given = job.data.given[i]
            row = tok[j][: given.shape[0]]
            changed = int((row[given] != job.data.inputs[i][given]).sum())
            if changed:  # never answer 200 with a changed prompt: the engine or the strategy wrote into its inputs
                msg = (f"decoding changed {changed} given cell(s) of a row: the engine "
                       f"({type(self.engine).__name__}) or the strategy ('{(job.strategy or self.default).name}') "
                       "writes into the "
                       "tokens it is given; fix or replace that plugin")
                log.error("%s", msg)
                self.stats["errors"] += 1
                self._fail(rid, msg)
                continue
            self.rows.pop(rid, None)
            self.mixed.release([rid])
            job.tokens[i] = row
            job.nfe[i] = nfe[j]
            if order is not None:
                job.order[i] = order[j][: given.shape[0]]
            job.remaining -= 1
            if job.remaining == 0:
                self._resolve(job)

    def _fail(self, rid: int, msg: str) -> None:
        entry = self.rows.pop(rid, None)
        if entry is None:
            return
        job = entry[0]
        self.mixed.release(job.ids)
        if job.error is None:
            job.error = msg
            for other in job.ids:  # the job's other rows are void too
                if other != rid:
                    self.rows.pop(other, None)
            with self.cv:
                self.pending = collections.deque(e for e in self.pending if e[1] is not job)
            self._resolve(job)

    def _resolve(self, job: Job) -> None:
        def done() -> None:
            if not job.future.done():
                job.future.set_result(job)

        job.loop.call_soon_threadsafe(done)

    def _drop(self, jobs: list[Job]) -> None:
        ids = set()
        for job in jobs:
            self.mixed.release(job.ids)
            for rid in job.ids:
                if self.rows.pop(rid, None) is not None:
                    ids.add(rid)
        if not ids:
            return
        with self.cv:
            before = len(self.pending)
            self.pending = collections.deque(e for e in self.pending if e[0] not in ids)
            self.m.queue.set(len(self.pending))
            dropped = before - len(self.pending)
        t = torch.tensor(sorted(ids), dtype=torch.int64)
        dropped += self.table.drop(t)
        for table, _ in self.private:
            dropped += table.drop(t)
        self.m.cancelled.inc(dropped)

    def snapshot(self) -> dict[str, Any]:
        return {
            "queue": len(self.pending),
            "live": self.table.n + sum(t.n for t, _ in self.private),
            "capacity": self.table.capacity,
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.stats.items()},
        }


# -- answers --------------------------------------------------------------------------------------------------------
def _scalar(x: Any) -> Any:
    x = np.asarray(x)
    if x.ndim == 0:
        v = x.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return x.tolist()


def answers(task: Task, job: Job, trace: bool) -> list[dict[str, Any]]:
    """One answer per row: the formatted answer, tokens, the task's scores, forward passes (and commit order)."""
    data, pred = job.data, job.tokens
    scores = task.score(pred, data)
    out = []
    for i in range(len(data)):
        per = {k: _scalar(np.asarray(v)[i]) for k, v in scores.items()}
        solved = np.asarray(scores["solved"])[i]
        ok = bool(solved >= 1.0) if np.asarray(solved).dtype.kind == "f" else bool(solved)  # a whole fraction
        unique = bool(data.meta["unique"][i]) if "unique" in data.meta else True
        valid = not bool(np.asarray(scores["invalid"])[i]) if "invalid" in scores else True
        row: dict[str, Any] = {
            "answer": task.format(pred[i]),
            "tokens": pred[i].tolist(),
            "solved": ok,
            "valid": valid,
            "unique": unique,
            "nfe": int(job.nfe[i]),
            "scores": per,
        }
        if trace:
            row["order"] = [0 if g else int(o)
                            for o, g in zip(job.order[i], data.given[i], strict=True)]
        out.append(row)
    return out


# -- the app --------------------------------------------------------------------------------------------------------
def model_name(model: str) -> str:
    """The model as /v1/health shows it: its name, never a path of the server's file system (a run's final model
    ``runs/x/model`` is ``x/model``)."""
    from pathlib import Path

    if not model:
        return ""
    p = Path(model)
    if not p.is_absolute() and len(p.parts) == 1:
        return model  # a name as given (e.g. a packaged model's)
    return f"{p.parent.name}/{p.name}" if p.name == "model" and p.parent.name else p.name


class Service:
    """The Starlette app around one worker."""

    def __init__(self, engine: Any, task: Task, strategy: Strategy, options: ServeOptions | None = None,
                 model: str = "") -> None:
        self.engine, self.task, self.strategy = engine, task, strategy
        self.opts = options or ServeOptions()
        self.opts.max_inputs = min(self.opts.max_inputs, self.opts.max_queue)  # a request must fit in the queue
        if self.opts.scheduler not in ("continuous", "static"):
            raise InputError(f"unknown scheduler '{self.opts.scheduler}'; use continuous or static")
        self.model = model
        self.metrics = Metrics()
        self.worker = Worker(engine, task, strategy, self.opts, self.metrics)
        self.app = self._build()

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
        from starlette.responses import Response

        self.metrics.requests.labels(str(status)).inc()
        return Response(msgspec.json.encode(body), status_code=status, media_type="application/json",
                        headers=headers)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return self._json(status, {"error": " ".join(str(message).split())}, headers)

    async def _body(self, request: Any) -> bytes | int:
        """The request body, or the status that ends the request: 413 (too big), 408 (not received within
        ``read_timeout``), 499 (the client hung up while sending it)."""
        from starlette.requests import ClientDisconnect

        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.opts.max_body:
            return 413
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.opts.read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.opts.max_body:
                        return 413
                    chunks.append(chunk)
        except TimeoutError:
            return 408
        except ClientDisconnect:
            return 499
        return b"".join(chunks)

    def _cross_origin(self, request: Any) -> str | None:
        """The ``Origin`` of a browser request from another site (None for the same site or a non-browser client):
        a page elsewhere must not be able to use the server through its visitors' browsers (a ``text/plain`` POST
        needs no CORS preflight)."""
        origin = request.headers.get("origin")
        if origin is None:
            return None
        from urllib.parse import urlsplit

        host = request.headers.get("host", "")
        return None if origin != "null" and urlsplit(origin).netloc == host else origin

    def _parse(self, req: SolveRequest) -> Dataset:
        if (req.input is None) == (req.inputs is None):
            raise InputError('give exactly one of "input" (a string) or "inputs" (a list of strings)')
        texts = [req.input] if req.input is not None else req.inputs
        assert texts is not None
        if not texts:
            raise InputError('"inputs" is empty; give at least one input')
        if len(texts) > self.opts.max_inputs:
            raise InputError(f'"inputs" holds {len(texts)} inputs; at most {self.opts.max_inputs} per request')
        parts = []
        for k, text in enumerate(texts):
            try:
                parts.append(self.task.parse(text))
            except UnmaskError as exc:
                raise InputError(f"inputs[{k}]: {exc}" if req.inputs is not None else str(exc)) from None
        return parts[0] if len(parts) == 1 else Dataset.concat(parts)

    async def _read(self, request: Any) -> bytes | Any:
        """The request's body, or the error response that ends it (cross-origin, too big, too slow, gone)."""
        origin = self._cross_origin(request)
        if origin is not None:
            return self.error(403, f"cross-origin request (Origin: {origin[:100]}) refused; call the server from the "
                                   "same origin or from a non-browser client")
        body = await self._body(request)
        if body == 413:
            return self.error(413, f"request body over {self.opts.max_body} bytes")
        if body == 408:
            return self.error(408, f"request body not received within {self.opts.read_timeout:g} s",
                              {"Connection": "close"})
        if body == 499:  # nobody is listening; the status is for the metrics only
            return self.error(499, "client disconnected while sending the request")
        assert isinstance(body, bytes)
        return body

    def request_strategy(self, spec: str | dict[str, Any] | None, steps: int | None) -> Strategy | None:
        """A request's own strategy (None: the server's), within the server's step limit."""
        if spec is None and steps is None:
            return None
        from unmask.core.cli import strategy_section
        from unmask.core.strategy import build_strategy

        section = dict(self.strategy.config_dict()) if spec is None else strategy_section(spec, '"strategy"')
        if steps is not None:
            section["steps"] = steps
        strategy = build_strategy(section, "strategy")
        if strategy.steps > self.worker.mixed.cap:
            raise InputError(f'"steps" is {strategy.steps}; this server allows at most {self.worker.mixed.cap}')
        return strategy

    async def _decode(self, request: Any, data: Dataset, seed: int | None, strategy: Strategy | None) -> Any:
        """Decode ``data`` in the worker's slot table: the finished :class:`Job`, or the error response."""
        loop = asyncio.get_running_loop()
        job = Job(data, loop, loop.create_future(), seed=seed, strategy=strategy)
        try:
            self.worker.submit(job)
        except QueueFull:
            return self.error(503, f"queue full ({self.opts.max_queue} rows waiting); retry later",
                              {"Retry-After": str(self.opts.retry_after)})
        except ShuttingDown:
            return self.error(503, "server is shutting down", {"Retry-After": str(self.opts.retry_after)})

        async def disconnected() -> None:
            while True:
                msg = await request.receive()
                if msg["type"] == "http.disconnect":
                    return

        watch = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({job.future, watch}, timeout=self.opts.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server gave up on it (past --shutdown-timeout): free its slots, and
            self.worker.cancel(job)    # say so in JSON (uncaught, the client would get uvicorn's plain-text 500)
            return self.error(503, "server shut down before the request was answered (shutdown timeout); retry "
                                   "when it is back",
                              {"Retry-After": str(self.opts.retry_after), "Connection": "close"})
        finally:
            watch.cancel()
        if job.future not in done:
            self.worker.cancel(job)
            if watch in done:  # nobody is listening; the status is for the metrics only
                return self.error(499, "client disconnected")
            return self.error(504, f"request not answered within {self.opts.request_timeout:g} s")
        if job.error is not None:
            return self.error(500, job.error)
        self.metrics.latency.observe(time.perf_counter() - job.t0)
        return job

    async def solve(self, request: Any) -> Any:
        body = await self._read(request)
        if not isinstance(body, bytes):
            return body
        try:
            req = msgspec.json.decode(body, type=SolveRequest)
        except msgspec.ValidationError as exc:
            return self.error(400, f"invalid request: {exc}")
        except msgspec.DecodeError as exc:
            return self.error(400, f"request body is not valid JSON: {exc}")
        try:
            data = self._parse(req)
            strategy = self.request_strategy(req.strategy, req.steps)
        except UnmaskError as exc:
            return self.error(400, str(exc))
        job = await self._decode(request, data, req.seed, strategy)
        if not isinstance(job, Job):
            return job
        rows = answers(self.task, job, req.trace)
        return self._json(200, rows[0] if req.input is not None else {"results": rows})

    async def _openai(self, request: Any, chat: bool) -> Any:
        from unmask.core import openai_api

        body = await self._read(request)
        if not isinstance(body, bytes):
            return body
        try:
            req = msgspec.json.decode(body, type=openai_api.CompletionRequest)
        except msgspec.ValidationError as exc:
            return self.error(400, f"invalid request: {exc}")
        except msgspec.DecodeError as exc:
            return self.error(400, f"request body is not valid JSON: {exc}")
        if req.stream:
            return self.error(400, '"stream" is not offered by this server; send the request without it')
        limits = openai_api.Limits(max_tokens=self.opts.max_tokens, max_steps=self.worker.mixed.cap,
                                   max_rows=self.opts.max_inputs)
        try:
            data, strategy, _gen = openai_api.parse(self.task, req, chat, self.strategy, limits)
        except UnmaskError as exc:
            return self.error(400, str(exc))
        job = await self._decode(request, data, req.seed, strategy)
        if not isinstance(job, Job):
            return job
        return self._json(200, openai_api.response(self.task, req, chat, data, job.tokens, job.nfe,
                                                   model_name(self.model)))

    async def completions(self, request: Any) -> Any:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: Any) -> Any:
        return await self._openai(request, chat=True)

    async def health(self, request: Any) -> Any:
        w = self.worker
        status = "stopping" if w.stopping else ("ok" if w.is_alive() else "down")
        return self._json(200 if status == "ok" else 503, {
            "status": status, "task": self.task.name, "model": model_name(self.model),
            "strategy": self.strategy.config_dict(),
            "scheduler": self.opts.scheduler, "max_queue": self.opts.max_queue, **w.snapshot(),
        })

    async def metrics_endpoint(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _build(self) -> Any:
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        @asynccontextmanager
        async def lifespan(app: Any) -> Any:
            self.worker.start()
            try:
                yield
            finally:
                self.worker.stop()  # requests in flight were answered before this (uvicorn waits for them)
                await asyncio.get_running_loop().run_in_executor(None, self.worker.join, 10.0)

        async def http_error(request: Any, exc: Any) -> Any:
            return self.error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "error")

        async def internal(request: Any, exc: Exception) -> Any:
            log.exception("unhandled error")
            return self.error(500, f"internal error: {type(exc).__name__}: {exc}")

        return Starlette(
            routes=[
                Route("/v1/solve", self.solve, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            ],
            exception_handlers={HTTPException: http_error, Exception: internal},
            lifespan=lifespan,
        )


# -- running it -----------------------------------------------------------------------------------------------------
def _protocol(read_timeout: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a header read timeout: a connection that has not sent a whole request head
    within ``read_timeout`` seconds (of connecting, or of its previous answer) is closed, so slow clients cannot
    hold connections open (the body has the same limit in :meth:`Service._body`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(read_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_head():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_head():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Protocol


def listen_socket(host: str, port: int) -> Any:
    """A socket bound to ``host``:``port`` (before uvicorn starts: a taken port or an unknown host is one
    ``error:`` line and exit 2, not uvicorn's log and exit 3)."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise InputError(
            f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}; check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        hint = "choose another --port (0: any free one)" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    return sock


def _uvicorn_server(app: Any, host: str, port: int, shutdown_timeout: float, log_level: str = "warning",
                    read_timeout: float = 30.0) -> Any:
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, announcing its address once it listens and exiting 0 on SIGTERM / SIGINT.

        uvicorn re-raises a captured signal after its graceful shutdown (so the process dies of it); a server that
        finished its requests cleanly should exit 0 instead, so the handlers only ask it to exit.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not getattr(self, "_announced", False):
                self._announced = True
                print("unmask serve: shutting down (finishing requests in flight)", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                self.port = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                print(f"unmask serve: listening on http://{host}:{self.port}", flush=True)

    # uvicorn annotates timeout_graceful_shutdown as int but passes it to asyncio.wait_for, which takes seconds as float
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout, lifespan="on",  # type: ignore[arg-type]
                            http=_protocol(read_timeout))
    return Server(config)


def add_arguments(s: argparse.ArgumentParser) -> None:
    """``unmask serve`` options beyond the model ones (``--model --runtime --device --bf16 --threads --steps
    --opt --seed``)."""
    s.add_argument("--strategy", default="margin", help="decoding strategy (default margin)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port; the address is printed)")
    s.add_argument("--max-batch", type=int, default=256, help="slot table rows (default 256)")
    s.add_argument("--max-queue", type=int, default=1024, help="rows waiting for a slot; beyond: 503 (default 1024)")
    s.add_argument("--max-inputs", type=int, default=256, help="inputs in one batch request (default 256)")
    s.add_argument("--max-body", type=int, default=1 << 20, help="request body limit in bytes (default 1 MiB)")
    s.add_argument("--request-timeout", type=float, default=300.0, help="seconds until 504 (default 300)")
    s.add_argument("--scheduler", choices=("continuous", "static"), default="continuous",
                   help="continuous (default) or static batches, for comparison")
    s.add_argument("--static-wait-ms", type=float, default=50.0,
                   help="static: wait this long for a full batch (default 50)")
    s.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, wait this long for requests in flight (default 30)")
    s.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client has to send its request headers, and again its body (default 30)")
    s.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    s.add_argument("--max-steps", type=int, default=1024, help="the largest step budget a request may ask for "
                   "(its own \"steps\"; default 1024)")
    s.add_argument("--max-tokens", type=int, default=512, help="text models: the most tokens a request may generate "
                   "per choice (\"max_tokens\"; default 512)")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("max_batch", "max_queue", "max_inputs", "max_body", "max_steps", "max_tokens"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    for name in ("request_timeout", "shutdown_timeout", "read_timeout"):
        v = getattr(args, name, 30.0)
        if not (v > 0 and math.isfinite(v)):
            raise InputError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {v}")
    if not (args.static_wait_ms >= 0 and math.isfinite(args.static_wait_ms)):
        raise InputError(f"--static-wait-ms must be a number of milliseconds >= 0, got {args.static_wait_ms}")


def missing_extra() -> str | None:
    import importlib.util

    for mod in ("starlette", "uvicorn", "prometheus_client"):
        if importlib.util.find_spec(mod) is None:
            return mod
    return None


def run(args: argparse.Namespace, engine: Any, task: Task, strategy: Strategy) -> int:
    """``unmask serve``: build the service for an opened engine and serve it until SIGTERM / SIGINT."""
    _check_args(args)
    opts = ServeOptions(max_batch=args.max_batch, max_queue=args.max_queue, max_inputs=args.max_inputs,
                        max_body=args.max_body, request_timeout=args.request_timeout, scheduler=args.scheduler,
                        static_wait_ms=args.static_wait_ms, seed=args.seed, read_timeout=args.read_timeout,
                        max_steps=args.max_steps, max_tokens=args.max_tokens)
    service = Service(engine, task, strategy, opts, model=str(args.model))
    server = _uvicorn_server(service.app, args.host, args.port, args.shutdown_timeout, args.log_level,
                             args.read_timeout)
    sock = listen_socket(args.host, args.port)
    print(f"unmask serve: task {task.name}, strategy {strategy.name}, {args.scheduler} scheduler, "
          f"{service.worker.table.capacity} slots", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    except OSError as exc:
        raise InputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except SystemExit as exc:  # uvicorn's start-up failure (it logged why)
        raise InputError(f"the server could not start on {args.host}:{args.port} (uvicorn exit {exc.code}); see "
                         "the log line above") from None
    if not server.started:
        raise InputError(f"cannot listen on {args.host}:{args.port}; is the port free?")
    print("unmask serve: stopped", file=sys.stderr, flush=True)
    return 0


__all__ = ["Service", "ServeOptions", "SolveRequest", "Worker", "add_arguments", "answers", "run"]
