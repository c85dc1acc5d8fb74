"""Training: SIGKILL mid-run then --resume, reproducibility, pickle refusal, corrupt and mismatched checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.training import checkpoint as ckpt
from unmask.core.errors import CheckpointError, ConfigError
from unmask.core.models import load_model

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "sudoku-default.toml")


def tiny(out: Path, cache: Path, steps: int = 30, **extra: str) -> list[str]:
    sets = {
        "out": f'"{out}"', "train.steps": str(steps), "train.batch_size": "16", "train.data_size": "300",
        "train.val_size": "0", "train.ckpt_every": "5", "train.log_every": "5", "train.warmup_steps": "5",
        "train.threads": "1", "task.cache_dir": f'"{cache}"', "backbone.d_model": "32", "backbone.n_layers": "1",
        "backbone.n_heads": "2", **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def run_train(args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "unmask.core.cli", "train", "--config", CONFIG, "--no-progress"]
    for a in args:
        cmd += ["--set", a]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd + kw.pop("extra", []), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "run"
    args = tiny(out, tmp_path / "cache", steps=400)
    proc = run_train(args)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [d for d in (out / "checkpoints").glob("step-*")] if (out / "checkpoints").exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None, proc.stderr.read()
    step = int(latest.name.split("-")[1])
    assert step >= 5 and step < 400
    # the checkpoint it will resume from is intact: loads, and its weights are finite
    _, model, cfg = load_model(latest)
    assert cfg["step"] == step and all(torch.isfinite(p).all() for p in model.parameters())
    state, opt = ckpt.load_training_state(latest)
    assert state["step"] == step and opt is not None and opt["state"]
    # no half-written directories are left behind as checkpoints
    assert all(not d.name.startswith(".") for d in ckpt.latest_checkpoint(out).parent.iterdir() if d.name.startswith("step"))
    resumed = run_train(tiny(out, tmp_path / "cache", steps=step + 10), extra=["--resume"])
    stdout, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in recs if r.get("event") == "resume"]
    assert ev and ev[-1]["step"] == step and ev[-1]["checkpoint"] == latest.name
    after = [r["step"] for r in recs if "loss" in r and recs.index(r) > recs.index(ev[-1])]
    assert after and after[0] > step and after[-1] == step + 10
    assert (out / "model" / "model.safetensors").exists() and (out / "curves.png").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_keeps_every_finished_step(tmp_path, sig):
    """Ctrl-C or SIGTERM between checkpoints: the run stops after the step in progress and writes its checkpoint
    (exit status 130, one line saying where), and --resume goes on from that step."""
    out = tmp_path / "run"
    proc = run_train(tiny(out, tmp_path / "cache", steps=100_000, **{"train.ckpt_every": "100000",
                                                                     "train.log_every": "1"}))
    deadline = time.time() + 120
    logged = 0
    while time.time() < deadline and logged < 7:
        if (out / "metrics.jsonl").exists():
            logged = sum('"loss"' in x for x in (out / "metrics.jsonl").read_text().splitlines())
        time.sleep(0.1)
    assert logged >= 7, proc.stderr.read()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None
    step = ckpt.load_training_state(latest)[0]["step"]
    last = max(json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x)
    assert step == last >= 7  # every step it logged is in the checkpoint
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"interrupted: training stopped by {signal.Signals(sig).name} at step {step}; ")
    assert "--resume" in line
    resumed = run_train(tiny(out, tmp_path / "cache", steps=step + 3), extra=["--resume"])
    _, stderr = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, stderr
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in recs if r.get("event") == "resume"][-1]["step"] == step
    assert ckpt.read_config(out / "model")["step"] == step + 3


def test_training_is_reproducible_from_seed(tmp_path):
    from unmask.core.training.trainer import train

    a = train(CONFIG, tiny(tmp_path / "a", tmp_path / "cache", steps=6), progress=False)
    b = train(CONFIG, tiny(tmp_path / "b", tmp_path / "cache", steps=6), progress=False)
    wa = ckpt.load_tensors(a / ckpt.MODEL_FILE)
    wb = ckpt.load_tensors(b / ckpt.MODEL_FILE)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="already has checkpoints; pass --resume"):
        train(CONFIG, tiny(tmp_path / "a", tmp_path / "cache", steps=6), progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from unmask.core.training.trainer import train

    tmp = tmp_path_factory.mktemp("m")
    return train(CONFIG, tiny(tmp / "run", tmp / "cache", steps=2), progress=False)


def test_refuses_pickle(tmp_path, model_dir):
    p = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, p)
    with pytest.raises(CheckpointError, match="refusing to load .*pickle"):
        load_model(p)
    d = tmp_path / "pickled"
    d.mkdir()
    torch.save({"w": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load pickle"):
        load_model(d)


def test_corrupt_and_mismatched_checkpoints(tmp_path, model_dir):
    import shutil

    from unmask.core.task import build_task

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(bad)
    bad2 = tmp_path / "bad2"
    shutil.copytree(model_dir, bad2)
    cfg = json.loads((bad2 / "config.json").read_text())
    cfg["backbone"]["d_model"] = 64
    (bad2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match its config"):
        load_model(bad2)
    (bad2 / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(bad2)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    # a checkpoint for another task configuration is refused when a task is named
    other = build_task({"name": "sudoku"})
    load_model(model_dir, task=other)  # same layout: fine
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["task"]["name"] = "not_sudoku"
    bad3 = tmp_path / "bad3"
    shutil.copytree(model_dir, bad3)
    (bad3 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unusable task section"):
        load_model(bad3)


def test_resume_with_other_backbone_is_refused(tmp_path):
    from unmask.core.training.trainer import train

    out = tmp_path / "r"
    train(CONFIG, tiny(out, tmp_path / "cache", steps=5), progress=False)
    with pytest.raises(CheckpointError, match="backbone in checkpoint .* differs"):
        train(CONFIG, tiny(out, tmp_path / "cache", steps=10, **{"backbone.d_model": "64"}), resume=True, progress=False)
    # where the generated data is cached is not part of what was trained: another cache_dir resumes
    done = train(CONFIG, tiny(out, tmp_path / "cache2", steps=6), resume=True, progress=False)
    assert ckpt.read_config(done)["step"] == 6


def test_warm_start_from_a_model(tmp_path, model_dir):
    from unmask.core.training.trainer import train

    base = ckpt.read_config(model_dir)
    # one step at a tiny lr keeps the base weights (a fresh model would not have them); its samples are carried over
    out = train(CONFIG, tiny(tmp_path / "w", tmp_path / "cache", steps=1, **{
        "train.init_from": f'"{model_dir}"', "train.lr": "1e-9", "train.warmup_steps": "0"}), progress=False)
    cfg = ckpt.read_config(out)
    assert cfg["init_from"]["samples"] == base["samples"] and cfg["samples"] == base["samples"] + 16
    # with validation on, a warm start is validated before its first step: the base weights, on this run's data
    v = tiny(tmp_path / "v", tmp_path / "cache", steps=1, **{"train.init_from": f'"{model_dir}"', "train.lr": "1e-9",
                                                            "train.warmup_steps": "0", "train.val_size": "16",
                                                            "train.val_every": "1"})
    train(CONFIG, v, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "val_margin" in r]
    assert [r["step"] for r in vals] == [0, 1] and vals[0]["warm_start"] and vals[0]["samples"] == base["samples"]
    assert recs.index(vals[0]) < min(i for i, r in enumerate(recs) if "loss" in r)
    assert vals[0]["val_margin_cells"] == pytest.approx(vals[1]["val_margin_cells"], abs=2e-3)  # the same weights
    w0, w1 = ckpt.load_tensors(model_dir / ckpt.MODEL_FILE), ckpt.load_tensors(out / ckpt.MODEL_FILE)
    assert all(torch.allclose(w0[k], w1[k], atol=1e-5) for k in w0)
    fresh = ckpt.load_tensors(train(CONFIG, tiny(tmp_path / "f", tmp_path / "cache", steps=1, **{
        "train.lr": "1e-9", "train.warmup_steps": "0", "train.seed": "5"}), progress=False) / ckpt.MODEL_FILE)
    assert not all(torch.allclose(w0[k], fresh[k], atol=1e-5) for k in w0)
    # from a run's checkpoint, whose training seconds are in its state file (made large here to tell them apart)
    src = tmp_path / "step-0000001"
    shutil.copytree(ckpt.checkpoint_at(tmp_path / "f", 1), src)
    state = json.loads((src / ckpt.STATE_FILE).read_text())
    (src / ckpt.STATE_FILE).write_text(json.dumps({**state, "train_seconds": 1e6}))
    warm = train(CONFIG, tiny(tmp_path / "c", tmp_path / "cache", steps=1, **{"train.init_from": f'"{src}"'}),
                 progress=False)
    assert 1e6 < ckpt.read_config(warm)["train_seconds"] < 1e6 + 600
    # another backbone, or a path that is not there, is refused with a one-line error before any training
    with pytest.raises(CheckpointError, match="init_from: the backbone of .* differs"):
        train(CONFIG, tiny(tmp_path / "x", tmp_path / "cache", steps=1, **{
            "train.init_from": f'"{model_dir}"', "backbone.d_model": "64"}), progress=False)
    with pytest.raises(CheckpointError, match="train.init_from: model path .* does not exist"):
        train(CONFIG, tiny(tmp_path / "y", tmp_path / "cache", steps=1, **{
            "train.init_from": f'"{tmp_path / "nope"}"'}), progress=False)


def test_keep_steps_survive_rotation(tmp_path):
    from unmask.core.training.trainer import train

    # checkpoints every 5 steps, 2 kept by rotation; steps 3 and 10 are kept whatever ckpt_every and the rotation say,
    # and step 40 is past the run's end (a shortened run keeps what it reaches)
    out = tmp_path / "k"
    train(CONFIG, tiny(out, tmp_path / "cache", steps=25, **{"train.keep_checkpoints": "2",
                                                              "train.keep_steps": "[3, 10, 40]"}), progress=False)
    names = sorted(d.name for d in (out / "checkpoints").iterdir())
    assert names == [ckpt.checkpoint_name(s) for s in (3, 10, 20, 25)]
    assert ckpt.checkpoint_at(out, 3) is not None and ckpt.checkpoint_at(out, 5) is None
    assert ckpt.read_config(ckpt.checkpoint_at(out, 3))["step"] == 3
    assert ckpt.latest_checkpoint(out).name == ckpt.checkpoint_name(25)


def test_warm_start_and_resume_fill_in_defaults_of_older_configs(tmp_path, model_dir):
    """A model or checkpoint written before some backbone/task keys existed (e.g. relation_bias) still warm-starts
    and resumes: configs are compared with defaults filled in; a real difference is named key by key."""
    import shutil

    from unmask.core.training.trainer import train

    old = tmp_path / "old-model"
    shutil.copytree(model_dir, old)
    cfg = json.loads((old / ckpt.CONFIG_FILE).read_text())
    for key in ("relation_bias", "relation_bias_init", "norm"):
        cfg["backbone"].pop(key)
    (old / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))
    out = train(CONFIG, tiny(tmp_path / "w", tmp_path / "cache", steps=1, **{"train.init_from": f'"{old}"'}),
                progress=False)
    assert ckpt.read_config(out)["init_from"]["path"] == str(old)
    # the same for --resume from a checkpoint whose config lacks those keys
    run = tmp_path / "r"
    train(CONFIG, tiny(run, tmp_path / "cache", steps=5), progress=False)
    latest = ckpt.latest_checkpoint(run)
    cfg = json.loads((latest / ckpt.CONFIG_FILE).read_text())
    cfg["backbone"].pop("relation_bias")
    (latest / ckpt.CONFIG_FILE).write_text(json.dumps(cfg))
    assert ckpt.read_config(train(CONFIG, tiny(run, tmp_path / "cache", steps=6), resume=True,
                                  progress=False))["step"] == 6
    with pytest.raises(CheckpointError, match=r"differs from the config \(d_model: 32 vs 64\)"):
        train(CONFIG, tiny(tmp_path / "x", tmp_path / "cache", steps=1, **{
            "train.init_from": f'"{old}"', "backbone.d_model": "64"}), progress=False)


def test_ema_weights_are_the_final_model_and_survive_resume(tmp_path):
    """train.ema: the final model holds the moving average (not the last weights), which equals the average
    computed from the per-step weights, and a resumed run ends with the same average as an uninterrupted one."""
    from unmask.core.training.trainer import EMA_FILE, train

    cache = tmp_path / "cache"
    ema = {"train.ema": "0.9", "train.ckpt_every": "1", "train.keep_checkpoints": "20"}
    final = train(CONFIG, tiny(tmp_path / "a", cache, steps=6, **ema), progress=False)
    weights = [ckpt.load_tensors(ckpt.checkpoint_at(tmp_path / "a", s) / ckpt.MODEL_FILE) for s in range(1, 7)]
    avg = ckpt.load_tensors(final / ckpt.MODEL_FILE)
    key = "blocks.0.fc1.weight"
    assert key in avg
    last = ckpt.load_tensors(ckpt.checkpoint_at(tmp_path / "a", 6) / EMA_FILE)[key]
    assert torch.equal(last, avg[key]) and not torch.equal(avg[key], weights[-1][key])
    # from the step-1 average on: ema_n = d_n * ema_(n-1) + (1 - d_n) * w_n, d_n = min(0.9, (1 + n) / (10 + n))
    ema_k = ckpt.load_tensors(ckpt.checkpoint_at(tmp_path / "a", 1) / EMA_FILE)[key]
    for n in range(2, 7):
        d = min(0.9, (1 + n) / (10 + n))
        ema_k = d * ema_k + (1 - d) * weights[n - 1][key]
    assert torch.allclose(ema_k, avg[key], atol=1e-6)
    # kill after step 4 (max_steps), resume: the same average at the end
    from unmask.core.training.trainer import Trainer, resolve_config

    Trainer(resolve_config(CONFIG, tiny(tmp_path / "b", cache, steps=6, **ema)), progress=False, max_steps=4).run()
    resumed = train(CONFIG, tiny(tmp_path / "b", cache, steps=6, **ema), resume=True, progress=False)
    assert torch.equal(ckpt.load_tensors(resumed / ckpt.MODEL_FILE)[key], avg[key])


def test_bf16_auto_follows_the_cpu(monkeypatch):
    """train.bf16 = "auto" is bf16 exactly on CPUs with AMX tiles or AVX512-BF16; true/false are taken as they are."""
    from unmask.core.training.trainer import use_bf16

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert use_bf16("auto", cpu) is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert use_bf16("auto", cpu) is False and use_bf16(True, cpu) is True and use_bf16(False, cpu) is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert use_bf16("auto", cpu) is True and use_bf16(False, cpu) is False


def test_resume_with_fewer_steps_exports_at_once(tmp_path):
    """--resume --set train.steps=N at or below the checkpoint's step finishes the run: the model is exported from
    the checkpoint without generating any data."""
    import shutil

    from unmask.core.training.trainer import Trainer, resolve_config, train

    cache = tmp_path / "cache"
    Trainer(resolve_config(CONFIG, tiny(tmp_path / "r", cache, steps=20)), progress=False, max_steps=10).run()
    assert not (tmp_path / "r" / "model").exists()
    shutil.rmtree(cache)
    final = train(CONFIG, tiny(tmp_path / "r", cache, steps=10), resume=True, progress=False)
    assert ckpt.read_config(final)["step"] == 10 and not cache.exists()


@settings(max_examples=200, deadline=None)
@given(horizon=st.integers(1, 400), warmup=st.integers(0, 50), data=st.data())
def test_cooldown_schedule(horizon, warmup, data):
    """lr_at: warmup then cosine over schedule_steps; a cooldown takes the cosine's value where it starts down a
    straight line to min_lr_ratio * lr on the last step; nothing before it changes."""
    import math

    from unmask.core.training.trainer import TrainOptions, lr_at

    steps = data.draw(st.integers(1, horizon))
    cooldown = data.draw(st.integers(0, steps))
    long = TrainOptions(steps=horizon, warmup_steps=warmup, lr=1e-3, min_lr_ratio=0.05)
    o = TrainOptions(steps=steps, schedule_steps=horizon, cooldown_steps=cooldown, warmup_steps=warmup, lr=1e-3,
                     min_lr_ratio=0.05)

    def reference(s):  # the plain warmup + cosine, written out again
        if s < warmup:
            return 1e-3 * (s + 1) / warmup
        p = min(1.0, (s - warmup) / max(1, horizon - warmup))
        return 1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    start = steps - cooldown
    for s in range(start):
        assert lr_at(s, o) == pytest.approx(reference(s)) == lr_at(s, long)
    cool = [lr_at(s, o) for s in range(start, steps)]
    if cooldown:
        assert cool[-1] == pytest.approx(5e-5)
        gaps = [a - b for a, b in zip([reference(start)] + cool, cool, strict=False)]
        assert max(gaps) - min(gaps) < 1e-12  # a straight line (down, or up from a value inside the warmup)


def test_cooldown_branch_finishes_a_model_off_a_long_run(tmp_path):
    """A branch (the long run's checkpoint copied, resumed with fewer steps, the long run's schedule and a cooldown)
    trains the long run's learning rates up to the cooldown, then falls linearly to min_lr_ratio * lr on its last
    step and exports its model; the long run goes on from its own checkpoint untouched."""
    import shutil

    from unmask.core.training.trainer import Trainer, lr_at, resolve_config, train

    cache = tmp_path / "cache"
    long = tiny(tmp_path / "long", cache, steps=40, **{"train.log_every": "1"})
    Trainer(resolve_config(CONFIG, long), progress=False, max_steps=10).run()
    (tmp_path / "branch" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt.checkpoint_at(tmp_path / "long", 10), tmp_path / "branch" / "checkpoints" / "step-0000010")
    branch = tiny(tmp_path / "branch", cache, steps=18, **{"train.log_every": "1", "train.schedule_steps": "40",
                                                           "train.cooldown_steps": "6"})
    final = train(CONFIG, branch, resume=True, progress=False)
    assert ckpt.read_config(final)["step"] == 18
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "branch" / "metrics.jsonl").read_text().splitlines())
           if "lr" in r}
    o_long = resolve_config(CONFIG, long).train
    assert lrs[11] == pytest.approx(lr_at(10, o_long)) and lrs[12] == pytest.approx(lr_at(11, o_long))
    cool = [lrs[s] for s in range(13, 19)]  # the steps numbered 13..18 ran with the lr of steps 12..17
    assert all(a > b for a, b in zip(cool, cool[1:], strict=False))
    assert cool[-1] == pytest.approx(o_long.lr * o_long.min_lr_ratio) and cool[0] < lr_at(12, o_long)
    assert not (tmp_path / "long" / "model").exists()
    train(CONFIG, tiny(tmp_path / "long", cache, steps=12), resume=True, progress=False)
    assert ckpt.read_config(tmp_path / "long" / "model")["step"] == 12
    with pytest.raises(ConfigError, match=r"cooldown_steps = 30 is longer than the run \(train.steps = 18\)"):
        resolve_config(CONFIG, tiny(tmp_path / "x", cache, steps=18, **{"train.cooldown_steps": "30"}))


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tmp_path):
    """train.compile = true trains the same model as eager (up to float summation order) and saves plain weights."""
    from unmask.core.training.trainer import train

    cache = tmp_path / "cache"
    eager = train(CONFIG, tiny(tmp_path / "e", cache, steps=3, **{"train.bf16": "false"}), progress=False)
    comp = train(CONFIG, tiny(tmp_path / "c", cache, steps=3, **{"train.bf16": "false", "train.compile": "true"}),
                 progress=False)
    a, b = ckpt.load_tensors(eager / ckpt.MODEL_FILE), ckpt.load_tensors(comp / ckpt.MODEL_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_init_from_accepts_a_backbone_that_differs_only_in_options_without_parameters(tmp_path):
    """Warm-starting a weight-shared model (backbone.repeats = 2) from an R = 1 one loads its weights one for one;
    an option that changes the parameters (n_layers) stays an error naming the difference."""
    from unmask.core.training.trainer import train

    src = train(CONFIG, tiny(tmp_path / "a", tmp_path / "cache", steps=2), progress=False)
    out = train(CONFIG, tiny(tmp_path / "b", tmp_path / "cache", steps=1, **{
        "train.init_from": f'"{src}"', "backbone.repeats": "2", "train.lr": "1e-12"}), progress=False)
    assert ckpt.read_config(out)["backbone"]["repeats"] == 2
    a, b = ckpt.load_tensors(src / ckpt.MODEL_FILE), ckpt.load_tensors(out / ckpt.MODEL_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)
    # the warm start stays on record when the run is resumed
    again = train(CONFIG, tiny(tmp_path / "b", tmp_path / "cache", steps=2, **{
        "train.init_from": f'"{src}"', "backbone.repeats": "2"}), resume=True, progress=False)
    assert ckpt.read_config(again)["init_from"]["path"] == str(src)
    with pytest.raises(CheckpointError, match=r"differs from the config \(n_layers: \d+ vs 3\) in its parameters"):
        train(CONFIG, tiny(tmp_path / "c", tmp_path / "cache", steps=1, **{
            "train.init_from": f'"{src}"', "backbone.n_layers": "3"}), progress=False)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A run stopped at step 10 with checkpoints at steps 5 and 10 (and its data cache)."""
    from unmask.core.training.trainer import Trainer, resolve_config

    tmp = tmp_path_factory.mktemp("two")
    Trainer(resolve_config(CONFIG, tiny(tmp / "run", tmp / "cache", steps=20)), progress=False, max_steps=10).run()
    assert [c.name for c in ckpt.checkpoints(tmp / "run")] == ["step-0000005", "step-0000010"]
    return tmp / "run", tmp / "cache"


def _resume_error(run: Path, cache: Path) -> str:
    from unmask.core.training.trainer import train

    with pytest.raises(CheckpointError) as info:
        train(CONFIG, tiny(run, cache, steps=20), resume=True, progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _state_edits(st: dict) -> list:
    """Valid JSON that is not the training state unmask wrote."""
    import copy

    def edit(fn):
        s = copy.deepcopy(st)
        out = fn(s)
        return s if out is None else out

    first = next(iter(st["optimizer"]["state"]))
    return [
        edit(lambda s: s.pop("step") and None),
        edit(lambda s: s.update(step="ten")),
        edit(lambda s: s["rng"]["0"].update(torch="***not base64***")),
        edit(lambda s: s["rng"]["0"].update(torch="AAAA")),  # base64, but not a generator state
        edit(lambda s: s["rng"]["0"].update(numpy={"bit_generator": "nope"})),
        edit(lambda s: s["optimizer"]["state"][first].update(exp_avg={"tensor": "missing"})),
        edit(lambda s: s["optimizer"].update(param_groups=[])),
        edit(lambda s: s["optimizer"]["state"].update({"x": {}})),
        [1, 2, 3],
    ]


def test_damaged_checkpoint_is_refused_naming_the_previous_good_one(tmp_path, two_checkpoints):
    """Every checkpoint file carries a checksum: a flipped byte in optimizer.safetensors, or state.json edited into
    other valid JSON, is one line naming the damaged checkpoint and the previous good one; moving the damaged one
    aside as told resumes from it."""
    import shutil

    src, cache = two_checkpoints
    files = ckpt.read_config(src / "checkpoints" / "step-0000010")["checksum"]["files"]
    assert {"optimizer.safetensors", "state.json"} <= set(files)
    st = json.loads((src / "checkpoints" / "step-0000010" / "state.json").read_text())
    cases: list = [("optimizer.safetensors", None)] + [("state.json", e) for e in _state_edits(st)]
    for i, (name, content) in enumerate(cases):
        for checked in (True, False):  # with the checksums, and as a checkpoint written before them
            run = tmp_path / f"r{i}{checked}"
            shutil.copytree(src, run)
            bad = run / "checkpoints" / "step-0000010"
            if content is None:
                data = bytearray((bad / name).read_bytes())
                data[len(data) // 2] ^= 0x01
                (bad / name).write_bytes(bytes(data))
            else:
                (bad / name).write_text(json.dumps(content))
            if not checked:
                for c in ckpt.checkpoints(run):
                    cfg = json.loads((c / "config.json").read_text())
                    del cfg["checksum"]["files"]
                    (c / "config.json").write_text(json.dumps(cfg))
            if content is None and not checked:
                continue  # a flipped byte inside a tensor is what only the checksum can see
            msg = _resume_error(run, cache)
            assert f"checkpoint '{bad}' is damaged" in msg, (i, checked, msg)
            assert f"the previous good one is '{run / 'checkpoints' / 'step-0000005'}'" in msg, (i, msg)
    # the fix the message gives works: the damaged checkpoint moved aside, --resume continues from step 5
    from unmask.core.training.trainer import train

    run = tmp_path / "r0True"
    shutil.move(run / "checkpoints" / "step-0000010", run / "step-0000010.damaged")
    final = train(CONFIG, tiny(run, cache, steps=12), resume=True, progress=False)
    assert ckpt.read_config(final)["step"] == 12
    # with no intact checkpoint left, it says so
    run = tmp_path / "r0True"
    for c in ckpt.checkpoints(run):
        (c / "state.json").write_text("{}")
    assert "no earlier checkpoint of the run is intact" in _resume_error(run, cache)


def test_latest_pointer_stays_inside_its_run(tmp_path, two_checkpoints):
    """LATEST that is not UTF-8, or names a path out of the run (``../../other/model``), is one line, in --resume
    and in ``eval --model <run dir>``, never a traceback or another run's model."""
    import shutil

    src, cache = two_checkpoints
    other = tmp_path / "other" / "checkpoints" / "m"
    shutil.copytree(src / "checkpoints" / "step-0000005", other)
    for content in (b"\xff\xfe\x00step", b"../../other/checkpoints/m\n",
                    b"step-0000005/../../../../other/checkpoints/m"):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(src, run)
        (run / "LATEST").write_bytes(content)
        with pytest.raises(CheckpointError, match=r"LATEST' .*write step-0000010 \(the newest\) into it") as info:
            ckpt.resolve_model_dir(run)
        assert "\n" not in str(info.value)
        assert "LATEST" in _resume_error(run, cache)
    proc = subprocess.run([sys.executable, "-m", "unmask.core.cli", "eval", "--model", str(run), "--generate", "2",
                           "--no-progress"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    (run / "LATEST").write_text("step-0000005\n")
    assert ckpt.latest_checkpoint(run).name == "step-0000005"


def test_non_utf8_training_log_does_not_stop_the_export(tmp_path, two_checkpoints):
    """A metrics.jsonl damaged into non-UTF-8 bytes: the resumed run still finishes and exports its model (the log
    copied as it is)."""
    import shutil

    from unmask.core.training.trainer import train

    src, cache = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(src, run)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 1, "loss": \xff\xfe}\n')
    with pytest.warns(UserWarning, match="training curves not drawn"):
        final = train(CONFIG, tiny(run, cache, steps=11), resume=True, progress=False)
    assert ckpt.read_config(final)["step"] == 11
    assert b"\xff\xfe" in (final / "metrics.jsonl").read_bytes()


def test_ship_model_from_a_checkpoint_keeps_the_average_and_the_record_up_to_its_step(tmp_path):
    """tools/ship_model.py on a checkpoint of a run that went on: the shipped weights are that checkpoint's EMA (in
    bf16), and the training record stops at its step."""
    import importlib.util

    from unmask.core.training.trainer import train

    out = tmp_path / "run"
    train(CONFIG, tiny(out, tmp_path / "cache", steps=10, **{"train.ema": "0.9"}), progress=False)
    spec = importlib.util.spec_from_file_location("ship_model_tool", ROOT / "tools" / "ship_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src = out / "checkpoints" / "step-0000005"
    assert tool.main([str(src), str(tmp_path / "shipped"), "--bf16"]) == 0
    steps = [json.loads(ln).get("step") for ln in (tmp_path / "shipped" / "metrics.jsonl").read_text().splitlines()]
    assert 5 in steps and max(s for s in steps if s is not None) == 5
    assert any(s == 10 for s in (json.loads(ln).get("step") for ln in (out / "metrics.jsonl").read_text().splitlines()))
    shipped = ckpt.load_tensors(tmp_path / "shipped" / ckpt.MODEL_FILE)
    ema = ckpt.load_tensors(src / "ema.safetensors")
    for name, value in ema.items():
        assert shipped[name].dtype == torch.bfloat16 and torch.equal(shipped[name], value.to(torch.bfloat16))
    _, module, cfg = load_model(tmp_path / "shipped")
    assert next(module.parameters()).dtype == torch.float32
    state = json.loads((src / "state.json").read_text())
    assert cfg["step"] == 5 and cfg["train_seconds"] == state["train_seconds"] > 0  # the checkpoint's training time


def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_train_window_stops_the_run_then_finishes_it_with_a_cooldown_to_the_lowest_lr(tmp_path):
    """tools/train_window.py: a long schedule stopped after --stable seconds (its checkpoint), then resumed with a
    linear cooldown sized from the measured step rate; the run ends on min_lr_ratio * lr and writes its model."""
    tool = _tool("train_window")
    out = tmp_path / "run"
    sets = tiny(out, tmp_path / "cache", steps=100000, **{"train.log_every": "1", "train.ckpt_every": "1000"})
    args = [CONFIG, "--stable", "12", "--cool", "30", "--deadline", "120", "--ship", str(tmp_path / "shipped"),
            *[a for s in sets for a in ("--set", s)]]
    assert tool.main(args) == 0
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if r.get("event") == "resume"]
    assert len(resumed) == 1
    k = resumed[0]["step"]
    final = ckpt.read_config(out / "model")
    assert final["step"] > k > 0
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] == min(lrs)
    cfg = final["train"]
    assert cfg["schedule_steps"] == 100000 and cfg["cooldown_steps"] == final["step"] - k
    assert lrs[-1] == pytest.approx(cfg["min_lr_ratio"] * cfg["lr"], rel=1e-3)
    assert (tmp_path / "run.stable.log").is_file() and (tmp_path / "run.cool.log").is_file()
    shipped = ckpt.load_tensors(tmp_path / "shipped" / "run" / ckpt.MODEL_FILE)
    assert all(v.dtype == torch.bfloat16 for v in shipped.values() if v.is_floating_point())


@given(rate=st.floats(0.01, 1000), seconds=st.floats(0, 1000))
@settings(max_examples=50, deadline=None)
def test_train_window_cooldown_fits_the_time_left(rate, seconds):
    tool = _tool("train_window")
    c = tool.cooldown_steps(rate, seconds)
    assert c >= 1
    assert c == 1 or c / rate <= seconds  # never sized past the time left


def test_train_window_refuses_bad_arguments(tmp_path, capsys):
    tool = _tool("train_window")
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "missing.toml"), "--stable", "10", "--cool", "5"])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([CONFIG, "--stable", "10", "--cool", "5", "--deadline", "5"])
    assert "must come after --stable" in capsys.readouterr().err
    assert tool.main([CONFIG, "--stable", "10", "--cool", "5", "--set", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_window: ") and "batch_size" in err and len(err.strip().splitlines()) == 1
