#!/usr/bin/env python
"""Reproduce a table of the paper: ``python tools/reproduce.py --table 2 --scale cpu``.

Runs the experiment file ``configs/experiments/table<N>.toml`` (the same as ``unmask experiment
configs/experiments/table<N>.toml --scale S``): trains what is missing (or reuses finished models in runs/),
evaluates, and writes results/table<N>.md (ours beside the paper's numbers, the commands, configs and training
time), a JSON twin and plots. ``--scale smoke`` runs tiny models in seconds (pipeline check, meaningless numbers,
written to results/smoke/); ``--scale cpu`` takes about two hours per table on 2 cores when nothing is reused;
``--scale paper`` uses configs/*-paper.toml (GPUs; results/paper/). Under ``torchrun --nproc_per_node K
tools/reproduce.py ...`` training is DDP and evaluation is sharded over the ranks.
"""

import argparse
import shlex
import sys

from unmask.core.errors import InputError, UnmaskError

TABLES = (1, 2, 3, 5)


def parse_pairs(text: str | None) -> list[str] | None:
    """Table 1's ``--pairs 25:275,50:250`` as the experiment's model keys (``lo_25_275``, ``lo_50_250``)."""
    if not text:
        return None
    keys = []
    for item in text.split(","):
        try:
            n, p = (int(x) for x in item.split(":"))
        except ValueError:
            raise InputError(f"bad --pairs item '{item}'; expected N:P, e.g. --pairs 25:275,50:250") from None
        keys.append(f"lo_{n}_{p}")
    return keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--table", type=int, required=True, choices=TABLES)
    p.add_argument("--scale", required=True, choices=("smoke", "cpu", "paper"))
    p.add_argument("--runs", help="run directories root (default: each config's own out, runs/smoke for smoke)")
    p.add_argument("--results", help="where table<N>.md goes (default results/, results/<scale>/ for smoke, paper)")
    p.add_argument("--n", type=int, help="evaluation examples (default: smoke 4, cpu 500, paper 5000)")
    p.add_argument("--seed", type=int, default=2025, help="evaluation data and decoding seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (training follows each config's train.device)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--steps", type=int, default=50, help="MDM decoding steps T")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model of the table, e.g. train.threads=2")
    p.add_argument("--pairs", help="Table 1 only: N:P pairs among the paper's five, e.g. 25:275,100:200")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from unmask.core.experiment import load_experiment, run_experiment
    from unmask.core.resources import configs_dir

    try:
        file = configs_dir() / "experiments" / f"table{args.table}.toml"
        models = parse_pairs(args.pairs)
        if models is not None:
            if args.table != 1:
                raise InputError(f"--pairs applies to Table 1 only, not Table {args.table}")
            known = load_experiment(file)[0].models
            for item, key in zip(args.pairs.split(","), models, strict=True):
                if key not in known:
                    pairs = ", ".join(k.removeprefix("lo_").replace("_", ":") for k in known)
                    raise InputError(f"--pairs {item}: Table 1 has no model for (N, P) = ({item.replace(':', ', ')}); "
                                     f"its pairs: {pairs} (add one to {file})")
        run_experiment(file, scale=args.scale, runs_dir=args.runs, results_dir=args.results, n_eval=args.n,
                       seed=args.seed, device=args.device, batch_size=args.batch_size, steps=args.steps,
                       overrides=args.set, models=models, progress=not args.no_progress,
                       command="python tools/reproduce.py " + " ".join(shlex.quote(a)
                                                                        for a in (argv or sys.argv[1:])))
    except UnmaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
