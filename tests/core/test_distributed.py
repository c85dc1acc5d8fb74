"""Several processes: 2 CPU processes under torchrun (gloo) train with DDP and evaluate sharded; the gathered
evaluation equals the single-process one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unmask.core.distributed import shard_bounds

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "sudoku-default.toml")

# Run by torchrun on every rank: DDP training (a few steps), `unmask eval` sharded over the ranks, and the gathered
# margin predictions saved by rank 0.
SCRIPT = r'''
import sys, json
import numpy as np
from unmask.core.cli import main
from unmask.core import distributed

out, cache = sys.argv[1], sys.argv[2]
sets = [f'out="{out}/run"', "train.steps=4", "train.batch_size=4", "train.data_size=24", "train.val_size=0",
        "train.ckpt_every=2", "train.warmup_steps=1", "train.threads=1", f'task.cache_dir="{cache}"',
        "backbone.d_model=32", "backbone.n_layers=1", "backbone.n_heads=2"]
args = ["train", "--config", sys.argv[3], "--no-progress"]
for s in sets:
    args += ["--set", s]
assert main(args) == 0
model = f"{out}/run/model"

from unmask.core.models import load_model
from unmask.core.strategy import build_strategy
from unmask.core.engine import TorchEngine
task, module, cfg = load_model(model)
data = task.generate("test", 10, 3)
r = distributed.sharded_evaluate(TorchEngine(module, cfg), task, data, build_strategy("margin"), batch_size=4, seed=3)
if distributed.is_main():
    np.save(f"{out}/pred2.npy", r.predictions)
    np.save(f"{out}/nfe2.npy", r.per_example["nfe"])
else:
    assert r is None
assert main(["eval", "--model", model, "--generate", "10", "--seed", "3", "--batch-size", "4",
             "--strategies", "margin,vanilla", "--json", f"{out}/eval2.json"]) == 0
assert not distributed.active()  # eval leaves the group on every rank, after rank 0 has written its report
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_bounds_cover_and_align():
    for n in (0, 1, 5, 10, 16, 17, 1000):
        for world in (1, 2, 3, 8):
            for bs in (1, 4, 256):
                cuts = [shard_bounds(n, r, world, bs) for r in range(world)]
                assert cuts[0][0] == 0 and cuts[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
                if -(-n // bs) >= world:  # enough batches: shards start at batch boundaries
                    assert all(lo % bs == 0 for lo, _ in cuts)
    assert [shard_bounds(10, r, 2, 4) for r in range(2)] == [(0, 4), (4, 10)]


def test_two_processes_train_and_evaluate_like_one(tmp_path):
    script = tmp_path / "ddp_job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), str(tmp_path), str(tmp_path / "cache"), CONFIG]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # only rank 0 reports
    assert p.stdout.count("model written to") == 1 and p.stdout.count("% solved") == 1, p.stdout

    # training: 2 ranks x 4 steps x batch 4; rank 0 wrote checkpoints and a model that loads
    from unmask.core.training import checkpoint as ckpt
    from unmask.core.models import load_model

    run = tmp_path / "run"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    start = [r for r in recs if r.get("event") == "start"]
    assert len(start) == 1 and start[0]["world_size"] == 2
    assert [r["samples"] for r in recs if "loss" in r][-1] == 4 * 4 * 2
    assert ckpt.latest_checkpoint(run).name == "step-0000004"
    task, module, cfg = load_model(run / "model")
    assert cfg["step"] == 4 and all(torch.isfinite(q).all() for q in module.parameters())

    # evaluation: the gathered predictions equal one process's, batch for batch
    from unmask.core.evaluate import evaluate
    from unmask.core.strategy import build_strategy
    from unmask.core.engine import TorchEngine

    data = task.generate("test", 10, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the one-thread ranks
    try:
        one = evaluate(TorchEngine(module, cfg), task, data, build_strategy("margin"), batch_size=4, seed=3)
    finally:
        torch.set_num_threads(threads)
    pred2 = np.load(tmp_path / "pred2.npy")
    assert pred2.shape == one.predictions.shape
    assert (pred2 == one.predictions).all()
    assert (np.load(tmp_path / "nfe2.npy") == one.per_example["nfe"]).all()

    # `unmask eval` under torchrun: the report of rank 0 covers the whole set; margin equals one process's
    rep = json.loads((tmp_path / "eval2.json").read_text())
    assert rep["world_size"] == 2 and rep["n"] == 10
    res = {r["strategy"]: r for r in rep["results"]}
    assert set(res) == {"margin", "vanilla"}
    m = res["margin"]
    assert m["n"] == 10 and m["solved"] == pytest.approx(one.solved) and m["cell_accuracy"] == pytest.approx(
        one.cell_accuracy) and m["nfe_mean"] == pytest.approx(one.nfe_mean)
    assert 1 <= res["vanilla"]["nfe_mean"] <= 50
