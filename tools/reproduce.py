#!/usr/bin/env python
"""Reproduce a table of the paper: ``python tools/reproduce.py --table 2 --scale cpu``.

Runs the experiment file ``configs/experiments/table<N>.toml``: the same as ``unmask experiment
configs/experiments/table<N>.toml --scale S`` (every other flag is that command's: ``unmask experiment --help``).
Trains what is missing (or reuses finished models in runs/), evaluates, and writes results/table<N>.md (ours beside
the paper's numbers, the commands, configs and training time), a JSON twin and plots. ``--scale smoke`` runs tiny
models in seconds (meaningless numbers, results/smoke/); ``cpu`` takes about two hours per table on 2 cores when
nothing is reused; ``paper`` uses configs/*-paper.toml (GPUs; results/paper/). Under ``torchrun`` training is DDP
and evaluation is sharded over the ranks.
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n\n")[0],
                                epilog="Other flags: those of unmask experiment (--scale, --runs, --results, --n, "
                                "--seed, --device, --batch-size, --steps, --set, --no-progress).")
    p.add_argument("--table", type=int, required=True, choices=(1, 2, 3, 4, 5))
    p.add_argument("--pairs", help="Table 1 only: (N, P) pairs among its models, e.g. 25:275,100:200 (the models "
                   "lo_25_275, lo_100_200 of table1.toml)")
    args, rest = p.parse_known_args(argv)
    if args.pairs:
        if args.table != 1:
            p.error(f"--pairs applies to Table 1 only, not Table {args.table}")
        rest += ["--models", ",".join("lo_" + x.strip().replace(":", "_") for x in args.pairs.split(","))]
    from unmask.core.cli import main as unmask
    from unmask.core.resources import configs_dir

    return unmask(["experiment", str(configs_dir() / "experiments" / f"table{args.table}.toml"), *rest])


if __name__ == "__main__":
    sys.exit(main())
