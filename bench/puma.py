#!/usr/bin/env python
"""Random vs progressive masking (PUMA) on Sudoku at equal training compute: one run per variant, same model.

Each variant trains the default Sudoku model shape from scratch (configs/sudoku-default.toml) for the same number
of steps and batch, with validation (% solved with margin, 50 steps) along the way; a run already finished is
reused, an interrupted one resumed. Then each final model is decoded on test and hard puzzles with margin and
vanilla. Writes results/puma.md (table, seconds-to-score ratios), results/puma.json and the curves against samples
and training seconds (results/puma-samples.png, results/puma-seconds.png, drawn by ``unmask curves``).

    python bench/puma.py [--steps 1200] [--only random,progressive] [--threads 1] [--n-test 300 --n-hard 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unmask.core.evaluate import evaluate
from unmask.core.models import load_model
from unmask.core.report import cpu_model, curves_table, read_metrics, training_curves
from unmask.core.strategy import build_strategy
from unmask.core.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "sudoku-default.toml"
# variant -> overrides of the base config (train.masking and its [train.progressive] options)
VARIANTS: dict[str, list[str]] = {
    "random": [],
    # fp32 gets the steps that take bf16's training seconds (a bf16 step is ~1.7x faster here): equal-seconds A/B
    "random-fp32": ["train.bf16=false", "train.steps=700"],
    "progressive": ["train.masking='progressive'"],
    "progressive-warmup": ["train.masking='progressive'", "train.progressive.warmup_steps=300"],
    "progressive-mixed": ["train.masking='progressive'", "train.progressive.random_fraction=0.25"],
    "progressive-margin": ["train.masking='progressive'", "train.progressive.score='margin'"],
    "progressive-collapse": ["train.masking='progressive'", "train.progressive.collapse=0.9"],
}


def seconds_to(va: list[dict], key: str, level: float, x: str = "train_seconds") -> float | None:
    """Training seconds (or ``x``: samples) at which validation ``key`` first reached ``level`` (linear between
    records)."""
    prev = None
    for r in va:
        if key in r and r[key] >= level:
            if prev is None:
                return r[x]
            f = (level - prev[key]) / max(r[key] - prev[key], 1e-9)
            return prev[x] + f * (r[x] - prev[x])
        prev = r if key in r else prev
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="runs/puma", help="where the runs go (reused when finished)")
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--n-hard", type=int, default=200)
    ap.add_argument("--results", default="results/puma")
    ap.add_argument("--set", action="append", default=[], help="more config overrides for every variant")
    a = ap.parse_args()
    names = [v for v in a.only.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(a.threads)
    common = [f"train.steps={a.steps}", "train.warmup_steps=200", "train.val_every=200", "train.val_size=300",
              "train.val_strategies=['margin']", "train.ckpt_every=200", "train.keep_checkpoints=1",
              f"train.threads={a.threads}", "train.bf16=true", *a.set]
    runs = {}
    for name in names:
        out = Path(a.runs) / name
        runs[name] = out
        if (out / "model" / "config.json").is_file():
            print(f"{name}: reusing {out}/model")
            continue
        resume = (out / "LATEST").is_file()
        print(f"{name}: training{' (resumed)' if resume else ''} -> {out}")
        train(str(BASE), common + VARIANTS[name] + [f"out='{out}'"], resume=resume)

    report: dict = {"cpu": cpu_model(), "threads": a.threads, "steps": a.steps, "variants": {}}
    task = None
    for split, n in (("test", a.n_test), ("hard", a.n_hard)):
        for name, out in runs.items():
            task, model, cfg = load_model(out / "model")
            from unmask.core.engine import TorchEngine

            row = report["variants"].setdefault(name, {"overrides": VARIANTS[name]})
            cache = out / f"eval-{split}-{n}.json"  # a rerun of the bench reuses a finished run's evaluation
            if cache.is_file():
                row.update(json.loads(cache.read_text()))
                continue
            engine = TorchEngine(model, cfg, device="cpu", bf16=True)
            data = task.generate(split, n, 2026)
            scores = {}
            for strat in ("margin", "vanilla"):
                res = evaluate(engine, task, data, build_strategy(strat, "bench", steps=50), batch_size=256, seed=0)
                scores[f"{split}_{strat}"] = 100 * res.solved
                print(f"{name} {split} {strat}: {100 * res.solved:.1f}")
            cache.write_text(json.dumps(scores) + "\n")
            row.update(scores)
    for name, out in runs.items():
        tr, va = read_metrics(out)
        row = report["variants"][name]
        row["samples"] = tr[-1]["samples"]
        row["train_seconds"] = tr[-1]["train_seconds"]
        row["samples_per_s"] = tr[-1]["samples"] / tr[-1]["train_seconds"]
        row["val_margin"] = [(r["step"], r["samples"], r["train_seconds"], 100 * r["val_margin"]) for r in va]
    res = Path(a.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    labelled = {k: str(v) for k, v in runs.items()}
    training_curves(res.with_name(res.name + "-samples.png"), labelled, x="samples",
                    title="Sudoku: random vs progressive masking (validation: margin)")
    training_curves(res.with_name(res.name + "-seconds.png"), labelled, x="seconds",
                    title="Sudoku: random vs progressive masking (validation: margin)")
    # training seconds to two validation levels: the score the reference (random masking) ends at, and the lowest
    # final score of all variants (which every run reaches), each as a ratio to the reference's seconds
    ref = "random" if "random" in runs else names[0]
    level = report["variants"][ref]["val_margin"][-1][3] / 100
    low = min(row["val_margin"][-1][3] for row in report["variants"].values()) / 100
    for name, out in runs.items():
        _, va = read_metrics(out)
        report["variants"][name]["seconds_to_ref"] = seconds_to(va, "val_margin", level)
        report["variants"][name]["seconds_to_low"] = seconds_to(va, "val_margin", low)
        report["variants"][name]["samples_to_ref"] = seconds_to(va, "val_margin", level, "samples")
        report["variants"][name]["samples_to_low"] = seconds_to(va, "val_margin", low, "samples")
    report["reference"] = {"variant": ref, "val_margin": 100 * level, "low": 100 * low}
    res.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Random vs progressive masking on Sudoku ({a.steps} steps x 128, same model, {a.threads} thread)",
             "", f"CPU: {report['cpu']}. `python bench/puma.py` (this table), curves: `{res.name}-samples.png`, "
             f"`{res.name}-seconds.png`.", "",
             f"| variant | samples/s | test margin | test vanilla | hard margin | hard vanilla | last val margin | "
             f"s to {100 * level:.1f}% val ({ref}'s last) | s to {100 * low:.1f}% val (lowest last) | "
             f"samples to {100 * level:.1f}% | samples to {100 * low:.1f}% |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(row: dict, key: str) -> str:
        t, t_ref = row[key], report["variants"][ref][key]
        return f"{t:.0f} ({t / t_ref:.2f}x)" if t is not None and t_ref else "not reached"

    for name, row in report["variants"].items():
        lines.append(f"| {name} | {row['samples_per_s']:.0f} | {row['test_margin']:.1f} | {row['test_vanilla']:.1f} | "
                     f"{row['hard_margin']:.1f} | {row['hard_vanilla']:.1f} | {row['val_margin'][-1][3]:.1f} | "
                     f"{ratio(row, 'seconds_to_ref')} | {ratio(row, 'seconds_to_low')} | "
                     f"{ratio(row, 'samples_to_ref')} | {ratio(row, 'samples_to_low')} |")
    lines += ["", "Seconds are only comparable between runs made on an otherwise idle machine (samples/s above says "
              "how loaded each run was); samples are comparable always: every variant makes one forward and "
              "backward pass per step of the same batch."]
    lines += ["", f"Test: {a.n_test} generated test puzzles, hard: {a.n_hard} hard ones (seed 2026), 50 steps, no "
              "noise, bf16 decoding; validation: 300 test puzzles of the training seed.", "", "```",
              curves_table(labelled), "```"]
    res.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
