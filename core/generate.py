"""``unmask generate``: decode prompts (or infills) with a text model and print the answers.

A front end like ``solve``: the model's task parses the input (``--prompt`` TEXT, or ``--prompts`` FILE.jsonl read
by the task), its decoding options come from the flags, and every row decodes in one batch (a slot table refilled
as rows finish). On a terminal, a single prompt is shown filling in live, still-masked positions drawn as ``░``.
Nothing here knows a tokenizer or a model class: the ``text`` task and the ``hf`` backbone do.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Any

from unmask.core.errors import InputError

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
    if args.json is not None and not str(args.json).strip():
        raise InputError("--json is empty; give a file name")
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


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from unmask.core.cli import default_threads
    from unmask.core.config import write_json
    from unmask.core.decoding.loop import decode
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.decoding.schedule import decode_many
    from unmask.core.engine import GuidanceEngine
    from unmask.core.files import check_outputs, check_writable
    from unmask.core.task import build_task

    _check(args)
    if args.json:  # before any work
        check_writable(args.json, "--json")
        check_outputs([("--json", args.json)], [("--model", args.model), *([("--prompts", args.prompts)]
                                                                            if args.prompts else [])])
    threads = args.threads or default_threads("generate")
    engine = open_engine(args.model, None, device=args.device, threads=threads, model=model_settings(args))
    task = build_task(engine.config["task"], "model task", model=args.model)
    if not hasattr(task, "answer"):
        raise InputError(f"model '{args.model}' decodes task '{task.name}', not text; use unmask solve or eval")
    data = task.read_file(args.prompts) if args.prompts else task.parse(args.prompt)
    lengths = data.meta["length"]
    gen = (~data.given).sum(axis=1)  # (N,) masked positions per row
    steps = args.steps or int(gen.max())
    if args.block_length:
        blocks = -(-gen // args.block_length)
        if int(blocks.max()) > steps:
            raise InputError(f"--steps {steps} is fewer than the {int(blocks.max())} blocks of --block-length "
                             f"{args.block_length}; give at least one step per block")
    strategy = text_strategy(args.strategy, steps, args.block_length)
    if args.cfg:
        engine = GuidanceEngine(engine, args.cfg, task.mask_id)
    gen_t = torch.Generator().manual_seed(args.seed)
    inputs, given = torch.from_numpy(data.inputs), torch.from_numpy(data.given)
    lens = torch.from_numpy(lengths)
    live = None
    if len(data) == 1 and sys.stdout.isatty() and not args.no_live:
        live = _Live(task, given, task.mask_id, sys.stdout)
    t0 = time.perf_counter()
    if len(data) == 1:
        res = decode(engine, inputs, given, strategy, mask_id=task.mask_id, generator=gen_t, lengths=lens,
                     on_step=live)
    else:
        res = decode_many(engine, inputs, given, strategy, mask_id=task.mask_id, generator=gen_t,
                          batch_size=args.batch_size, lengths=lens, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    if live is not None:
        live.clear()
    tokens = res.tokens.numpy()
    nfe = res.nfe.numpy()
    answers = [task.answer(tokens[i], data.given[i]) for i in range(len(data))]
    has_ref = bool(np.any([bool(a) for a in data.meta["answer"]]))
    scores = task.score(tokens, data) if has_ref else None
    for i, text in enumerate(answers):
        if len(data) > 1:
            print(f"--- {i + 1}")
        print(text)
    total_gen = int(gen.sum())
    print(f"forward passes: {int(nfe.sum())} ({nfe.mean():.1f} per row), tokens per forward: "
          f"{total_gen / max(int(nfe.sum()), 1):.2f}, {seconds:.2f} s"
          + (f", exact match: {scores['solved'].mean():.1%}" if scores is not None else ""), file=sys.stderr)
    if args.json:
        rows = [{"answer": answers[i], "nfe": int(nfe[i]), "generated": int(gen[i]),
                 **({"exact": bool(scores["solved"][i])} if scores is not None else {})} for i in range(len(data))]
        report = {"model": str(args.model), "strategy": strategy.config_dict(), "cfg": args.cfg, "seconds": seconds,
                  "rows": rows}
        write_json(args.json, report)
    return 0
