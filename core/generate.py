"""``unmask generate``: decode prompts (or infills) with a text model and print the answers.

A front end like ``solve``: the model's task parses the input (``--prompt`` TEXT, or ``--prompts`` FILE.jsonl read
by the task), its decoding options come from the flags, and every row decodes in one batch (a slot table refilled
as rows finish). On a terminal, a single prompt is shown filling in live, still-masked positions drawn as ``░``.
With ``--out`` each answer is appended to a JSON Lines file as its row finishes, and ``--resume`` decodes only the
prompts such a file still lacks.
Nothing here knows a tokenizer or a model class: the ``text`` task and the ``hf`` backbone do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from unmask.core.errors import InputError
from unmask.core.files import read_text

HELP = "generate text with a text MDM (a Hugging Face model directory or one of unmask's text models)"
MASK_GLYPH = "\u2591"


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", required=True, help="model directory (a Hugging Face checkpoint: config, weights, "
                   "tokenizer; or a text model unmask trained) or a model name (unmask list models)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", metavar="FILE.jsonl", help='JSON Lines: {"prompt": ...} or {"prefix": ..., '
                     '"suffix": ...} (infilling), optional "answer" (scored by exact match) and "gen_length"')
    s.add_argument("--gen-length", type=int, help="tokens to generate per prompt (default: the task's, 128)")
    s.add_argument("--block-length", type=int, default=0, help="semi-autoregressive blocks of this many generated "
                   "tokens, each given an even share of the steps (LLaDA's schedule; 0 = one block)")
    s.add_argument("--steps", type=int, help="forward-pass budget T (default: --gen-length, one token per pass)")
    s.add_argument("--strategy", default="top_prob", metavar="NAME[:KEY=VALUE...]", help="unmasking order, e.g. "
                   "top_prob (LLaDA's low-confidence remasking), margin, confidence_threshold:tau=0.9 (Fast-dLLM), "
                   "entropy_bound:gamma=0.1 (EB-sampler)")
    s.add_argument("--cfg", type=float, default=0.0, metavar="SCALE", help="classifier-free guidance (LLaDA): a "
                   "second forward with the prompt masked; logits = u + (SCALE + 1) (c - u); 0 = off")
    s.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    s.add_argument("--infill-length", choices=("oracle", "budget"), help="masks of an infill: the answer's token "
                   "count, or --gen-length (the model ends early with end-of-text)")
    s.add_argument("--mask-id", type=int, help="the mask token id (default: the tokenizer's, else the config's)")
    s.add_argument("--shift", type=int, choices=(0, 1), help="1: logits at i come from position i - 1 (Dream); "
                   "default: 1 for Dream checkpoints, else 0")
    s.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), help="weights' dtype (default "
                   "float32; auto: the checkpoint's)")
    s.add_argument("--trust-remote-code", action="store_true", help="run the modeling code the checkpoint carries "
                   "(LLaDA, Dream): this EXECUTES THE CHECKPOINT'S PYTHON CODE on this machine; only for checkpoints "
                   "you trust")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")
    s.add_argument("--threads", type=int, help="CPU threads (default: the cores not already busy)")
    s.add_argument("--batch-size", type=int, default=16, help="rows decoded at once (--prompts)")
    s.add_argument("--seed", type=int, default=0, help="seed of the decoding randomness")
    s.add_argument("--json", help="write every answer, its forward passes and scores as JSON")
    s.add_argument("--out", metavar="FILE.jsonl", help="write each answer to this JSON Lines file the moment its row "
                   "finishes (index, answer, forward passes, scores), instead of printing the answers; an "
                   "interrupted run keeps every finished row")
    s.add_argument("--resume", action="store_true", help="with --out: keep the rows already in it and decode only "
                   "the prompts it lacks (the same prompts and settings; checked)")
    s.add_argument("--no-live", action="store_true", help="no live view of the canvas (there is none when stdout "
                   "is not a terminal or for more than one prompt)")


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (("--gen-length", args.gen_length, 1), ("--steps", args.steps, 1),
                             ("--block-length", args.block_length, 0), ("--batch-size", args.batch_size, 1),
                             ("--threads", args.threads, 1), ("--mask-id", args.mask_id, 0)):
        if value is not None and value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    if not 0 <= args.seed < 2**63:
        raise InputError(f"--seed must lie in 0..2^63-1, got {args.seed}")
    if not args.cfg >= 0.0 or args.cfg > 1e4:
        raise InputError(f"--cfg must be a number in 0..10000, got {args.cfg}")
    for flag, value in (("--json", args.json), ("--out", args.out)):
        if value is not None and not str(value).strip():
            raise InputError(f"{flag} is empty; give a file name")
    if args.resume and not args.out:
        raise InputError("--resume continues an --out file; give --out FILE.jsonl")
    if not str(args.model).strip():
        raise InputError("--model is empty; give a model directory or a model name (unmask list models)")
    from unmask.core.resources import find_model

    args.model = str(find_model(args.model))  # a path, or a model name (packaged or from an entry point)


def model_settings(args: argparse.Namespace) -> list[str]:
    """The flags that configure the model and its task, as ``section.key=value`` settings of its config."""
    out = []
    if args.gen_length is not None:
        out.append(f"task.gen_length={args.gen_length}")
    if args.chat:
        out.append("task.chat=true")
    if args.infill_length:
        out.append(f"task.infill_length={args.infill_length}")
    if args.mask_id is not None:
        out.append(f"task.mask_id={args.mask_id}")
    if args.shift is not None:
        out.append(f"backbone.shift={args.shift}")
    if args.dtype:
        out.append(f"backbone.dtype={args.dtype}")
    if args.trust_remote_code:
        out.append("backbone.trust_remote_code=true")
    return out


def text_strategy(spec: str, steps: int, block_length: int) -> Any:
    """The strategy of ``--strategy NAME[:KEY=VALUE...]`` with the step budget and LLaDA's block schedule."""
    from unmask.core.cli import strategy_section
    from unmask.core.strategy import build_strategy

    own = strategy_section(spec)
    section: dict[str, Any] = {"name": own.pop("name"), "steps": steps}
    if block_length:
        section.update(block_size=block_length, block_steps="even")
    section.update(own)
    return build_strategy(section, "--strategy")


class _Live:
    """Redraws one row's generated span on a terminal after every pass."""

    def __init__(self, task: Any, given: Any, mask_id: int, stream: Any) -> None:
        self.task, self.given, self.mask_id, self.stream = task, given, mask_id, stream
        self.lines = 0

    def __call__(self, tokens: Any, masked: Any, nfe: Any) -> None:
        row = tokens[0][~self.given[0]].tolist()
        holes = masked[0][~self.given[0]].tolist()
        parts: list[str] = []
        run: list[int] = []
        for t, hole in zip(row, holes, strict=True):
            if hole:
                if run:
                    parts.append(self.task.tokenizer.decode(run))
                    run = []
                parts.append(MASK_GLYPH)
            else:
                run.append(t)
        if run:
            parts.append(self.task.tokenizer.decode(run))
        text = "".join(parts) + f"\n[pass {int(nfe[0])}]"
        if self.lines:
            self.stream.write(f"\x1b[{self.lines}A\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        width = max(20, shutil.get_terminal_size().columns)
        self.lines = sum(max(1, -(-len(line) // width)) for line in text.split("\n"))

    def clear(self) -> None:
        if self.lines:
            self.stream.write(f"\x1b[{self.lines}A\x1b[J")
            self.stream.flush()


class _Answers:
    """``--out``: one JSON line per prompt, appended and synced to disk as its row finishes, so an interrupted run
    keeps every finished row. Each row carries a ``key``: a hash of its prompt's tokens and of the settings that
    decide its answer; ``--resume`` keeps the rows whose key matches this command's and decodes the rest."""

    def __init__(self, path: str, keys: list[str], resume: bool) -> None:
        self.path, self.keys = Path(path), keys
        self.rows: dict[int, dict[str, Any]] = {}
        if self.path.is_file() and self.path.stat().st_size:
            if not resume:
                raise InputError(f"--out '{self.path}' already holds answers; add --resume to keep them and decode "
                                 "the rest, or choose another path")
            self.rows = self._read()
        self.before = len(self.rows)
        self.file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def _read(self) -> dict[int, dict[str, Any]]:
        text = read_text(self.path, "--out")
        complete = text[: text.rfind("\n") + 1]  # a line cut short by an interruption is decoded again
        rows: dict[int, dict[str, Any]] = {}
        n = len(self.keys)
        for k, line in enumerate(complete.splitlines(), 1):
            if not line.strip():
                continue
            where = f"--out '{self.path}' line {k}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{where} is not JSON, so the file is not from unmask generate --out; choose "
                                 "another --out") from None
            index = row.get("index") if isinstance(row, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= n:
                raise InputError(f"{where} has no index in 1..{n} (the prompts given); resume with the same "
                                 "--prompts, or choose another --out")
            if index in rows:
                raise InputError(f"{where} answers prompt {index} a second time, so the file is not from unmask "
                                 "generate --out; choose another --out")
            if row.get("key") != self.keys[index - 1]:
                raise InputError(f"{where} answers prompt {index} with another prompt or other settings (--model, "
                                 "--strategy, --steps, --gen-length, --block-length, --cfg, --seed...) than this "
                                 "command; rerun it as it was, or choose another --out")
            rows[index] = row
        size = self.path.stat().st_size
        keep = self.path.read_bytes().rfind(b"\n") + 1
        if keep != size:  # drop the cut line (only once every complete line has checked out)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        return rows

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.rows[row["index"]] = {**row, "key": self.keys[row["index"] - 1]}
        self.file.write("".join(json.dumps(self.rows[r["index"]], ensure_ascii=False) + "\n" for r in rows))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _row_keys(args: argparse.Namespace, strategy: Any, data: Any) -> list[str]:
    """Per prompt, a hash of its tokens and of every setting that decides its answer (``--out``'s ``key``)."""
    import hashlib

    settings = json.dumps({"model": args.model, "model_settings": model_settings(args), "steps": args.steps,
                           "strategy": strategy.config_dict(), "block_length": args.block_length, "cfg": args.cfg,
                           "seed": args.seed}, sort_keys=True, default=str)
    keys = []
    for i in range(len(data)):
        n = int(data.meta["length"][i])
        h = hashlib.sha256(settings.encode())
        h.update(data.inputs[i, :n].tobytes())
        h.update(data.given[i, :n].tobytes())
        keys.append(h.hexdigest()[:16])
    return keys


def _rows(task: Any, tokens: Any, part: Any, index: Any, nfe: Any, scored: bool) -> list[dict[str, Any]]:
    """The answer rows of decoded ``tokens`` (n, L) for the examples ``part`` (1-based ``index``, n): the answer
    text, forward passes, generated positions and, where the prompts carry answers, exact match (and whether the
    program passed its tests, for infills with tests)."""
    scores = task.score(tokens, part) if scored else None
    rows = []
    for j in range(len(part)):
        row: dict[str, Any] = {"index": int(index[j]), "answer": task.answer(tokens[j], part.given[j]),
                               "nfe": int(nfe[j]), "generated": int((~part.given[j]).sum())}
        if scores is not None:
            row["exact"] = bool(scores.get("exact", scores["solved"])[j])
            if "exact" in scores:
                row["passed"] = bool(scores["solved"][j])
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from unmask.core.cli import default_threads
    from unmask.core.config import write_json
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.files import check_outputs, check_writable
    from unmask.core.task import build_task

    _check(args)
    written = [(flag, path) for flag, path in (("--json", args.json), ("--out", args.out)) if path]
    for flag, path in written:  # before any work
        check_writable(path, flag)
    if written:
        check_outputs(written, [("--model", args.model), *([("--prompts", args.prompts)] if args.prompts else [])])
    threads = args.threads or default_threads("generate")
    engine = open_engine(args.model, None, device=args.device, threads=threads, model=model_settings(args))
    task = build_task(engine.config["task"], "model task", model=args.model)
    if not hasattr(task, "answer"):
        raise InputError(f"model '{args.model}' decodes task '{task.name}', not text; use unmask solve or eval")
    data = task.read_file(args.prompts) if args.prompts else task.parse(args.prompt)
    gen = (~data.given).sum(axis=1)  # (N,) masked positions per row
    steps = args.steps or int(gen.max())
    if args.block_length:
        blocks = -(-gen // args.block_length)
        if int(blocks.max()) > steps:
            raise InputError(f"--steps {steps} is fewer than the {int(blocks.max())} blocks of --block-length "
                             f"{args.block_length}; give at least one step per block")
    strategy = text_strategy(args.strategy, steps, args.block_length)
    has_ref = bool(np.any([bool(a) for a in data.meta["answer"]]))
    answers = _Answers(args.out, _row_keys(args, strategy, data), args.resume) if args.out else None
    try:
        todo = np.array([i for i in range(len(data)) if answers is None or i + 1 not in answers.rows], dtype=np.int64)
        new = _decode_rows(args, task, engine, strategy, data.take(todo), todo + 1, has_ref, answers,
                           live_ok=len(data) == 1)
    except KeyboardInterrupt:
        if answers is None:
            raise
        raise KeyboardInterrupt(f"{len(answers.rows)} of {len(data)} answers are in {args.out}; rerun the same "
                                "command with --resume to decode the rest") from None
    finally:
        if answers is not None:
            answers.close()
    rows, seconds = new
    if answers is None:
        for row in rows:
            if len(data) > 1:
                print(f"--- {row['index']}")
            print(row["answer"])
    nfe = np.array([r["nfe"] for r in rows], dtype=np.int64)
    summary = "nothing left to decode" if not rows else (
        f"forward passes: {int(nfe.sum())} ({nfe.mean():.1f} per row), tokens per forward: "
        f"{sum(r['generated'] for r in rows) / max(int(nfe.sum()), 1):.2f}, {seconds:.2f} s")
    if rows and has_ref:
        summary += f", exact match: {np.mean([r['exact'] for r in rows]):.1%}"
        if "passed" in rows[0]:
            summary += f", tests passed: {np.mean([r['passed'] for r in rows]):.1%}"
    if answers is not None:
        kept = f" ({answers.before} kept from before)" if answers.before else ""
        summary += f"; {len(answers.rows)} of {len(data)} answers in {args.out}{kept}"
    print(summary, file=sys.stderr)
    if args.json:
        every = rows if answers is None else [
            {k: v for k, v in answers.rows[i].items() if k != "key"} for i in sorted(answers.rows)]
        report = {"model": str(args.model), "strategy": strategy.config_dict(), "cfg": args.cfg, "seconds": seconds,
                  "rows": every}
        write_json(args.json, report)
    return 0


def _decode_rows(args: argparse.Namespace, task: Any, engine: Any, strategy: Any, data: Any, index: Any,
                 has_ref: bool, answers: _Answers | None, live_ok: bool) -> tuple[list[dict[str, Any]], float]:
    """Decode the examples ``data`` (1-based prompt numbers ``index``); with ``answers`` each row is scored and
    written the moment it finishes. Returns the rows, in prompt order, and the decoding seconds."""
    import torch

    from unmask.core.decoding.loop import decode
    from unmask.core.decoding.schedule import decode_many
    from unmask.core.engine import GuidanceEngine

    if not len(data):
        return [], 0.0
    if args.cfg:
        engine = GuidanceEngine(engine, args.cfg, task.mask_id)
    gen_t = torch.Generator().manual_seed(args.seed)
    inputs, given = torch.from_numpy(data.inputs), torch.from_numpy(data.given)
    lens = torch.from_numpy(data.meta["length"])
    done: dict[int, dict[str, Any]] = {}

    def finish(ids: torch.Tensor, tokens: torch.Tensor, nfe: torch.Tensor) -> None:
        if answers is None:  # scored once at the end (infills with tests run in one sandbox pool)
            return
        idx = ids.numpy()
        rows = _rows(task, tokens.numpy(), data.take(idx), index[idx], nfe.numpy(), has_ref)
        answers.add(rows)
        done.update((r["index"], r) for r in rows)

    live = None
    if live_ok and sys.stdout.isatty() and not args.no_live:
        live = _Live(task, given, task.mask_id, sys.stdout)
    t0 = time.perf_counter()
    if len(data) == 1:
        res = decode(engine, inputs, given, strategy, mask_id=task.mask_id, generator=gen_t, lengths=lens,
                     on_step=live)
        finish(torch.zeros(1, dtype=torch.int64), res.tokens, res.nfe)
    else:
        res = decode_many(engine, inputs, given, strategy, mask_id=task.mask_id, generator=gen_t,
                          batch_size=args.batch_size, lengths=lens, progress=sys.stderr.isatty(), on_finish=finish)
    seconds = time.perf_counter() - t0
    if live is not None:
        live.clear()
    if answers is None:
        return _rows(task, res.tokens.numpy(), data, index, res.nfe.numpy(), has_ref), seconds
    return [done[int(i)] for i in index], seconds
