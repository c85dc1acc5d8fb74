"""Text decoding benchmark: memory and time of a decode step at LLaDA's size, host share, tokens per forward.

    python bench/text.py            # about 2 minutes on one core

1. **One decode step at B = 32, L = 1024, V = 126,464** (LLaDA's vocabulary), 512 prompt + 512 masked positions,
   blocks of 32, with a fake engine that returns random logits at the positions it is asked for. Each case runs in
   a fresh process; its peak resident memory above the process's baseline is reported. unmask asks for logits at
   the current block's candidates only ((B, 32, V) = 0.52 GB of float32); a loop that scores the whole canvas
   would need (B, L, V) = 16.6 GB for the logits alone and as much again for the softmax, which this machine does
   not have: that case is computed, not run.
2. **Host share of a step** with tiny random models (LLaDA stand-ins: Llama made bidirectional) at B = 32,
   L = 1024: the share of the step's wall time spent outside the engine call (the engine is wrapped to time its
   calls), with LLaDA's vocabulary (1 layer, hidden 16) and with a 55-token one (2 layers, hidden 32).
3. **Tokens per forward** of each strategy on that tiny model (64 generated tokens, blocks of 32, 64 steps). A
   random model's confidences say little about a trained one's; the numbers show the mechanics.

Writes ``results/text.json`` and ``results/text.md``. Numbers only: it never asserts timings.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
B, L, P, V, BLOCK, MASK = 32, 1024, 512, 126_464, 32, 126_336


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class FakeEngine:
    """Random logits at the positions asked for (an ``index`` engine), or at every position."""

    def __init__(self, index: bool) -> None:
        self.vocab_size, self.seq_len, self.max_batch = V, L, None
        self.device, self.config = torch.device("cpu"), {}
        self.inputs = ("lengths", "index") if index else ("lengths",)
        self.gen = torch.Generator().manual_seed(0)
        self.seconds = 0.0

    def __call__(self, tokens: torch.Tensor, lengths: Any = None, index: Any = None) -> torch.Tensor:
        t0 = time.perf_counter()
        k = tokens.shape[1] if index is None else index.shape[1]
        out = torch.randn((tokens.shape[0], k, V), generator=self.gen)
        self.seconds += time.perf_counter() - t0
        return out


def _state() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 1000, (B, L))
    x[:, P:] = MASK
    given = torch.zeros((B, L), dtype=torch.bool)
    given[:, :P] = True
    return x, given


def step_case(strategy: str) -> dict[str, Any]:
    """One decode step (the first of the second block) in this process; peak memory above the baseline."""
    from unmask.core.decoding.loop import run_step
    from unmask.core.strategy import build_strategy

    x, given = _state()
    masked = ~given
    engine = FakeEngine(index=True)
    strat = build_strategy({"name": strategy, "steps": 512, "block_size": BLOCK, "block_steps": "even"})
    zero = torch.zeros(B, dtype=torch.int64)
    base = _rss_mb()
    t0 = time.perf_counter()
    run_step(engine, strat, x, masked, given, zero, zero, None, steps=512, mask_id=MASK,
             generator=torch.Generator().manual_seed(0), lengths=torch.full((B,), L))
    return {"strategy": strategy, "seconds": time.perf_counter() - t0, "engine_seconds": engine.seconds,
            "peak_mb": _rss_mb() - base, "logits_gb": B * BLOCK * V * 4 / 1e9}


def host_share(model_dir: Path) -> dict[str, Any]:
    from unmask.core.decoding.loop import decode
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.strategy import build_strategy
    from unmask.core.task import build_task

    engine = open_engine(model_dir, "torch", threads=1)
    inner = engine.__call__
    spent = [0.0]

    def timed(tokens: torch.Tensor, **kw: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = inner(tokens, **kw)
        spent[0] += time.perf_counter() - t0
        return out

    engine.__call__ = timed  # type: ignore[method-assign]

    class Wrapped:
        inputs, vocab_size, seq_len, max_batch = engine.inputs, engine.vocab_size, engine.seq_len, None
        device, config = engine.device, engine.config

        def __call__(self, tokens: torch.Tensor, **kw: Any) -> torch.Tensor:
            return timed(tokens, **kw)

    x, given = _state()
    x = x % engine.vocab_size
    mask_id = build_task(engine.config["task"]).mask_id
    x[x == mask_id] = 0
    x[:, P:] = mask_id
    x[:, P + 4 * BLOCK :] = 0  # 4 blocks to decode, the rest given (the step cost does not depend on it)
    given[:, P + 4 * BLOCK :] = True
    out = {}
    for name in ("top_prob", "margin"):
        strat = build_strategy({"name": name, "steps": 8, "block_size": BLOCK, "block_steps": "even"})
        spent[0] = 0.0
        t0 = time.perf_counter()
        res = decode(Wrapped(), x, given, strat, mask_id=mask_id, generator=torch.Generator().manual_seed(0),
                     lengths=torch.full((B,), L))
        wall = time.perf_counter() - t0
        out[name] = {"passes": int(res.nfe.max()), "seconds_per_step": wall / int(res.nfe.max()),
                     "host_share": 1.0 - spent[0] / wall}
    return out


def tokens_per_forward(model_dir: Path) -> dict[str, Any]:
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.decoding.schedule import decode_many
    from unmask.core.strategy import build_strategy
    from unmask.core.task import build_task

    engine = open_engine(model_dir, "torch", threads=1, model=["task.gen_length=64"])
    task = build_task(engine.config["task"])
    data = task.rows([{"prompt": p} for p in ("the cat sat on the mat", "hello world", "one two three four five",
                                              "def f x return y", "a big red dog ran home", "print code line")])
    out = {}
    for spec in ({"name": "top_prob"}, {"name": "margin"}, {"name": "confidence_threshold", "tau": 0.9},
                 {"name": "confidence_threshold", "tau": 0.5}, {"name": "entropy_bound", "gamma": 0.1},
                 {"name": "entropy_bound", "gamma": 1.0}):
        strat = build_strategy({**spec, "steps": 64, "block_size": BLOCK, "block_steps": "even"})
        res = decode_many(engine, torch.from_numpy(data.inputs), torch.from_numpy(data.given), strat,
                          mask_id=task.mask_id, generator=torch.Generator().manual_seed(0), batch_size=8,
                          lengths=torch.from_numpy(data.meta["length"]))
        label = ",".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        out[spec["name"] + (f":{label}" if label else "")] = 64 * len(data) / float(res.nfe.sum())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one step case, in a child process
    ap.add_argument("--out", default=str(ROOT / "results" / "text"), help="results/text(.json|.md)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.case:
        print(json.dumps(step_case(args.case)))
        return 0
    from unmask.core.report import cpu_model

    steps = []
    for name in ("top_prob", "margin", "confidence_threshold", "entropy_bound"):
        done = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True)
        steps.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"step {name}: {steps[-1]['seconds']:.2f} s, peak {steps[-1]['peak_mb']:.0f} MB", flush=True)
    sys.path.insert(0, str(ROOT / "tests"))
    from text_models import build

    with tempfile.TemporaryDirectory() as tmp:
        model = build("llada", Path(tmp) / "llada", llada_vocab=True, hidden=16, layers=1, context=L)
        host = {f"V={V:,}, {k}": v for k, v in host_share(model).items()}
        small = build("llada", Path(tmp) / "small", seed=5, context=L)
        host.update({f"V={len(json.loads((small / 'tokenizer.json').read_text())['model']['vocab'])}, {k}": v
                     for k, v in host_share(small).items()})
        print("host share:", {k: round(v["host_share"], 3) for k, v in host.items()}, flush=True)
        tpf = tokens_per_forward(small)
        print("tokens per forward:", {k: round(v, 2) for k, v in tpf.items()}, flush=True)
    report = {"cpu": cpu_model(), "B": B, "L": L, "V": V, "block": BLOCK, "step": steps, "host": host,
              "tokens_per_forward": tpf, "whole_canvas_logits_gb": B * L * V * 4 / 1e9}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Text decoding: one step at B = {B}, L = {L}, V = {V:,}", "",
             f"CPU: {report['cpu']}, one thread. `python bench/text.py`.", "",
             f"Logits only at the current block's candidates (blocks of {BLOCK}): (B, {BLOCK}, V) = "
             f"{steps[0]['logits_gb']:.2f} GB of float32. Scoring the whole canvas would take (B, L, V) = "
             f"{report['whole_canvas_logits_gb']:.1f} GB for the logits and as much for the softmax (not run).", "",
             "| strategy | step seconds | of which the fake engine | peak memory above baseline (MB) |",
             "|---|---|---|---|"]
    lines += [f"| {s['strategy']} | {s['seconds']:.2f} | {s['engine_seconds']:.2f} | {s['peak_mb']:.0f} |"
              for s in steps]
    lines += ["", "Host share of a step (the share of its wall time spent outside the engine call) with tiny LLaDA "
              "stand-ins at B = 32, L = 1024, blocks of 32: one with LLaDA's vocabulary (1 layer, hidden 16: its "
              "output layer costs about what scoring 126k logits costs, so scoring is a large share; at LLaDA's "
              "hidden size of 4096 the output layer alone costs 256 times more) and one with a 55-token "
              "vocabulary (2 layers, hidden 32), where what is left is the loop's own work:", "",
              "| model, strategy | seconds per step | host share |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds_per_step']:.3f} | {v['host_share']:.1%} |" for k, v in host.items()]
    lines += ["", "Tokens per forward on a tiny random model (6 prompts, 64 generated tokens, blocks of 32, 64 "
              "steps); a random model's confidences say little about a trained one's:", "",
              "| strategy | tokens per forward |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in tpf.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
