"""OpenAI-style completions for ``unmask serve`` on a text model: request shapes, per-request decoding options with
server-side limits, and response shapes.

``POST /v1/completions`` takes ``prompt`` (a string or a list), ``max_tokens`` (the generation length), ``suffix``
(OpenAI's insertion: the prompt is the prefix, so the masks are filled between them), ``n``, ``seed``,
``temperature`` (0 or absent: the most likely token; > 0: sampled) and unmask's own options ``strategy`` (a name,
``"name:key=value"`` or an object of options), ``steps`` and ``block_length``. ``POST /v1/chat/completions`` takes
``messages`` instead (through the tokenizer's chat template). Options beyond the server's limits are 400 with one
line. Every row of every request shares the server's slot table; each decodes with its own options
(:class:`unmask.core.decoding.mixed.MixedStrategies`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from unmask.core.errors import InputError, UnmaskError


class Message(msgspec.Struct):
    role: str
    content: str


class CompletionRequest(msgspec.Struct, kw_only=True):
    """The fields unmask reads; other OpenAI fields (``stream_options``, ``user``, ...) are accepted and ignored,
    as OpenAI-compatible servers do, except the ones that would change the answer (refused in :func:`check`)."""

    model: str = ""
    prompt: str | list[str] | None = None
    messages: list[Message] | None = None
    suffix: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    temperature: float | None = None
    stream: bool = False
    logprobs: Any = None
    echo: bool = False
    best_of: int | None = None
    strategy: str | dict[str, Any] | None = None
    steps: int | None = None
    block_length: int | None = None


@dataclass
class Limits:
    """Server-side bounds on what a request may ask for."""

    max_tokens: int = 512  # generated tokens per row
    max_steps: int = 1024  # forward-pass budget per row
    max_rows: int = 64  # rows per request (prompts x n)
    default_tokens: int = 128


def _strategy(req: CompletionRequest, gen: int, default: Any, limits: Limits) -> Any:
    from unmask.core.cli import strategy_section
    from unmask.core.strategy import build_strategy

    section = (dict(default.config_dict()) if req.strategy is None
               else strategy_section(req.strategy, '"strategy"'))
    if req.steps is not None:
        section["steps"] = req.steps
    elif req.strategy is not None and "steps" not in section:
        section["steps"] = gen  # one token per pass, as unmask generate
    if req.block_length:
        section.update(block_size=req.block_length, block_steps="even")
    if req.temperature is not None and req.temperature > 0:
        section.update(value="sample", temperature=float(req.temperature))
    elif req.temperature is not None:
        section["value"] = "argmax"
    strategy = build_strategy(section, "strategy")
    if strategy.steps > limits.max_steps:
        raise InputError(f'"steps" is {strategy.steps}; this server allows at most {limits.max_steps}')
    return strategy


def check(req: CompletionRequest, chat: bool, limits: Limits) -> int:
    """The request's generation length, after its one-line checks."""
    if chat and req.messages is None:
        raise InputError('/v1/chat/completions needs "messages"')
    if not chat and req.prompt is None:
        raise InputError('/v1/completions needs "prompt"')
    if req.echo or req.logprobs not in (None, False, 0) or (req.best_of or 1) != 1:
        raise InputError('"echo", "logprobs" and "best_of" are not offered by this server')
    gen = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    gen = min(limits.default_tokens, limits.max_tokens) if gen is None else gen
    if isinstance(gen, bool) or not 1 <= gen <= limits.max_tokens:
        raise InputError(f'"max_tokens" is {gen}; this server generates 1..{limits.max_tokens} tokens per choice')
    if not 1 <= req.n <= limits.max_rows:
        raise InputError(f'"n" is {req.n}; give 1..{limits.max_rows}')
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise InputError(f'"seed" is {req.seed}; give 0..2^63-1')
    if req.temperature is not None and not 0 <= req.temperature <= 100:
        raise InputError(f'"temperature" is {req.temperature}; give 0..100')
    if req.steps is not None and not 1 <= req.steps <= limits.max_steps:
        raise InputError(f'"steps" is {req.steps}; this server allows 1..{limits.max_steps}')
    if req.block_length is not None and not 0 <= req.block_length <= gen:
        raise InputError(f'"block_length" is {req.block_length}; give 0..max_tokens ({gen})')
    if req.block_length and req.steps is not None and -(-gen // req.block_length) > req.steps:
        raise InputError(f'"steps" ({req.steps}) is fewer than the {-(-gen // req.block_length)} blocks of '
                         f'"block_length" {req.block_length}')
    return gen


def parse(task: Any, req: CompletionRequest, chat: bool, default: Any, limits: Limits) -> tuple[Any, Any, int]:
    """(rows as a Dataset, the strategy they decode with, the generation length) of one request."""
    if not (hasattr(task, "rows") and hasattr(task, "answer")):
        raise InputError(f"this server decodes task '{task.name}', not text; use /v1/solve")
    gen = check(req, chat, limits)
    if chat:
        assert req.messages is not None
        examples = [{"messages": [{"role": m.role, "content": m.content} for m in req.messages],
                     "gen_length": gen}] * req.n
    else:
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt or [])
        if not prompts:
            raise InputError('"prompt" is an empty list')
        if len(prompts) * req.n > limits.max_rows:
            raise InputError(f"{len(prompts)} prompts x n = {req.n} is {len(prompts) * req.n} rows; at most "
                             f"{limits.max_rows} per request")
        examples = [({"prefix": p, "suffix": req.suffix, "gen_length": gen} if req.suffix is not None
                     else {"prompt": p, "gen_length": gen}) for p in prompts for _ in range(req.n)]
    try:
        data = task.rows(examples, "request")
    except UnmaskError as exc:
        raise InputError(str(exc)) from None
    return data, _strategy(req, gen, default, limits), gen


def response(task: Any, req: CompletionRequest, chat: bool, data: Any, tokens: Any, nfe: Any,
             model: str) -> dict[str, Any]:
    """The OpenAI-shaped answer (with unmask's forward passes per choice in ``nfe``)."""
    choices = []
    completion = 0
    for i in range(len(data)):
        text = task.answer(tokens[i], data.given[i])
        reason = "stop" if task.stopped(tokens[i], data.given[i]) else "length"
        completion += len(task.answer_ids(tokens[i], data.given[i]))
        choice: dict[str, Any] = {"index": i, "finish_reason": reason, "nfe": int(nfe[i])}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        choices.append(choice)
    prompt = int((data.meta["length"] - (~data.given).sum(axis=1)).sum())  # prompt (and suffix) tokens
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": req.model or model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


__all__ = ["CompletionRequest", "Limits", "check", "parse", "response"]
