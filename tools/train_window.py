#!/usr/bin/env python
"""Train one or more runs side by side inside a fixed wall-clock window, with a warmup-stable-decay schedule:
``python tools/train_window.py --stable 320 --cool 110 CONFIG [CONFIG ...]``.

Each config is started as written (its ``train.steps`` a long schedule, nearly flat over the steps the window
reaches). At ``--stable`` seconds every run gets SIGINT, which makes it write a checkpoint; each is then resumed with a
linear cooldown (``train.schedule_steps`` = its ``train.steps``, ``train.cooldown_steps`` = C) whose C steps are
sized from the run's measured step rate to end about ``--cool`` seconds later. At ``--deadline`` seconds whatever
still runs is stopped the same way (its checkpoint kept). A rented GPU for a few minutes is the use: the runs share
it, and each ends on a decayed learning rate however fast the machine turned out to be. Logs go to
``<out>.stable.log`` and ``<out>.cool.log`` beside each run directory; ``--ship DIR`` writes each finished model in
bf16 to ``DIR/<run name>`` (tools/ship_model.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESTART_SECONDS = 25.0  # a resumed run's start (imports, cached data, model) before its first step
RATE_MARGIN = 0.8  # the cooldown is sized to this share of the measured rate (validation and checkpoints take time)


def _run_dir(config: str, overrides: list[str]) -> tuple[Path, int]:
    """(run directory, train.steps) of a config with its overrides, resolved (and checked) as the trainer does."""
    from unmask.core.training.trainer import resolve_config

    resolved = resolve_config(config, overrides)
    return resolved.out, resolved.train.steps


def _rows(run: Path) -> list[dict[str, Any]]:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _latest_step(run: Path) -> int | None:
    latest = run / "LATEST"
    if not latest.is_file():
        return None
    return int(latest.read_text().strip().split("-")[1])


def step_rate(rows: list[dict[str, Any]], last: int = 6) -> float | None:
    """Steps per training second over the last ``last`` logged training rows (None with fewer than two)."""
    tr = [r for r in rows if "loss" in r and "train_seconds" in r]
    if len(tr) < 2:
        return None
    a, b = tr[max(0, len(tr) - last)], tr[-1]
    dt = b["train_seconds"] - a["train_seconds"]
    return (b["step"] - a["step"]) / dt if dt > 0 else None


def cooldown_steps(rate: float, seconds: float) -> int:
    """Steps of a cooldown that ends about ``seconds`` from now at ``rate`` steps/s (at least 1)."""
    return max(1, int(rate * max(0.0, seconds - RESTART_SECONDS) * RATE_MARGIN))


class Window:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def now(self) -> float:
        return time.time() - self.t0

    def say(self, *words: Any) -> None:
        print(f"[{self.now():6.1f}s]", *words, flush=True)

    def start(self, config: str, run: Path, extra: list[str], tag: str) -> subprocess.Popen:
        run.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "unmask.core.cli", "train", "--config", config,
               *[a for o in self.args.set for a in ("--set", o)], *extra]
        self.say("start", run.name, " ".join(cmd[4:]))
        with open(f"{run}.{tag}.log", "w") as log:  # the child keeps its own handle
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait(self, procs: dict[Path, subprocess.Popen], until: float) -> None:
        while self.now() < until and any(p.poll() is None for p in procs.values()):
            time.sleep(1.0)

    def stop(self, procs: dict[Path, subprocess.Popen], grace: float) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        end = time.time() + grace
        for run, p in procs.items():
            try:
                p.wait(timeout=max(1.0, end - time.time()))
            except subprocess.TimeoutExpired:
                self.say("killed", run.name, f"(no checkpoint within {grace:.0f} s of SIGINT)")
                p.kill()
                p.wait()
            self.say("stopped", run.name, "exit status", p.returncode)

    def run(self) -> int:
        from unmask.core.errors import UnmaskError

        a = self.args
        try:  # every config checked before any run starts
            runs = {cfg: _run_dir(cfg, a.set) for cfg in a.configs}
        except UnmaskError as exc:
            print(f"train_window: {exc}", file=sys.stderr)
            return 2
        stable = {run: self.start(cfg, run, [], "stable") for cfg, (run, _) in runs.items()}
        self.wait(stable, a.stable)
        self.stop(stable, a.grace)
        cool_end = min(self.now() + a.cool, a.deadline)
        cooling: dict[Path, subprocess.Popen] = {}
        for cfg, (run, steps) in runs.items():
            k, rate = _latest_step(run), step_rate(_rows(run))
            if k is None or rate is None:
                self.say("no cooldown for", run.name, "(no checkpoint or too few logged steps: see its log)")
                continue
            c = cooldown_steps(rate, cool_end - self.now())
            self.say(run.name, f"checkpoint at step {k:,}, {rate:.2f} steps/s: cooldown of {c:,} steps")
            cooling[run] = self.start(cfg, run, ["--resume", "--set", f"train.steps={k + c}", "--set",
                                                 f"train.schedule_steps={steps}", "--set",
                                                 f"train.cooldown_steps={c}"], "cool")
        self.wait(cooling, a.deadline)
        self.stop(cooling, a.grace)
        failed = [run.name for run, _ in runs.values() if run not in cooling or cooling[run].returncode != 0]
        if a.ship:
            for run in cooling:
                if (run / "model").is_dir():
                    rc = subprocess.call([sys.executable, str(Path(__file__).with_name("ship_model.py")),
                                          str(run / "model"), str(Path(a.ship) / run.name), "--bf16"], env=self.env)
                    self.say("shipped", run.name, "exit status", rc)
        if failed:
            self.say("not finished:", ", ".join(failed))
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_window", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="run configs (TOML), trained side by side")
    p.add_argument("--stable", type=float, required=True, help="seconds before the runs are stopped for the cooldown")
    p.add_argument("--cool", type=float, required=True, help="seconds the cooldown should take")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="seconds after which anything still running is stopped (default: stable + cool + 60)")
    p.add_argument("--grace", type=float, default=60.0, help="seconds a run gets to write its checkpoint on SIGINT")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    p.add_argument("--ship", default="", metavar="DIR", help="write each finished model in bf16 to DIR/<run name>")
    args = p.parse_args(argv)
    if args.stable <= 0 or args.cool <= 0:
        p.error("--stable and --cool must be positive numbers of seconds")
    for c in args.configs:
        if not Path(c).is_file():
            p.error(f"config '{c}' does not exist")
    args.deadline = args.deadline or args.stable + args.cool + 60.0
    if args.deadline <= args.stable:
        p.error(f"--deadline ({args.deadline:g} s) must come after --stable ({args.stable:g} s)")
    return Window(args).run()


if __name__ == "__main__":
    sys.exit(main())
