"""Training FLOP counter (unmask.core.flops): hand counts for both objectives, the generic fallback, the sparse output
layer, the trainer's cumulative count across a resume, and ``unmask curves --x flops``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from unmask.core.errors import ConfigError, InputError
from unmask.core.flops import TRAIN_FACTOR, config_sample_flops, forward_flops, sample_flops, step_flops
from unmask.core.models import build_model
from unmask.core.objective import build_objective
from unmask.core.report import read_metrics, training_curves, with_train_flops
from unmask.core.task import Dataset, build_task

from .test_cli import assert_one_line_error, unmask

SMALL = {"name": "transformer", "d_model": 32, "n_layers": 2, "repeats": 2, "n_heads": 4, "mlp_ratio": 2.0,
         "positions": "both"}


def built(objective: str, backbone: dict, **train):
    task = build_task({"name": "sudoku"}, "task")
    obj = build_objective(task, {"objective": objective, **train})
    module, _ = build_model(obj.model_task(), backbone, causal=obj.causal)
    return obj, module


def test_mdm_transformer_step_matches_a_hand_count():
    """Sudoku MDM: L = 81 tokens, V = 10, d = 32, MLP width h = 2 x 32 = 64 (GELU: 2 matrices), 2 layers applied
    twice (repeats = 2: 4 layer applications), logits at all 81 positions."""
    obj, module = built("mdm", SMALL)
    L, V, d, h, applied = 81, 10, 32, 64, 2 * 2
    qkv = 3 * d * d  # 3,072 MACs per token
    out_proj = d * d  # 1,024
    fc1 = d * h  # 2,048
    fc2 = h * d  # 2,048
    per_layer = L * (qkv + out_proj + fc1 + fc2)  # 81 x 8,192 = 663,552
    qk = L * L * d  # 209,952
    av = L * L * d  # 209,952
    layer = per_layer + qk + av  # 1,083,456
    head = L * d * V  # 25,920
    macs = applied * layer + head  # 4,359,744
    forward = 2 * macs  # 8,719,488
    train = 3 * forward  # 26,158,464 FLOPs per example
    assert (per_layer, qk + av, layer, head, macs) == (663_552, 419_904, 1_083_456, 25_920, 4_359_744)
    assert forward_flops(module, L) == forward == 8_719_488
    assert sample_flops(module, obj) == train == 26_158_464
    assert step_flops(module, obj, 16) == 16 * train == 418_535_424
    # the repeats count: one application of the stack is half the layers' cost, the head the same
    once, _ = build_model(obj.model_task(), {**SMALL, "repeats": 1})
    assert forward_flops(once, L) == 2 * (2 * layer + head)


def test_mdm_swiglu_relation_bias_hand_count():
    """SwiGLU has 3 matrices (gate and up d x h each, down h x d); the relation bias (Sudoku: row, column and box
    maps, rank 9 each: K = 27) widens each head's queries, keys and values by K: Q K^T and A V cost L^2 x H x K
    more each."""
    obj, module = built("mdm", {**SMALL, "mlp": "swiglu", "relation_bias": True})
    L, V, d, h, H, K, applied = 81, 10, 32, 64, 4, 27, 4
    assert module.rel_f.shape[1] == K  # the factors' rank, as derived by hand above
    per_layer = L * (3 * d * d + d * d + 2 * d * h + h * d)  # 81 x 10,240 = 829,440
    attention = 2 * L * L * d + 2 * L * L * H * K  # 419,904 + 1,417,176 = 1,837,080
    head = L * d * V  # 25,920
    forward = 2 * (applied * (per_layer + attention) + head)
    assert (per_layer, attention) == (829_440, 1_837_080)
    assert forward == 2 * (4 * 2_666_520 + 25_920) == 21_384_000
    assert sample_flops(module, obj) == 3 * forward == 64_152_000


def test_arm_transformer_step_matches_a_hand_count():
    """Sudoku ARM: the sequence is BOS + 81 (row, column, value) triples = 244 tokens, of which the model reads the
    first 243 (3 x the MDM's 81) and predicts each next one; vocabulary 10 values + 9 rows + 9 columns + BOS = 29;
    causal attention counted in full."""
    obj, module = built("arm", {**SMALL, "repeats": 1}, order="row_major")
    L, V, d, h, applied = 243, 29, 32, 64, 2
    assert L == 3 * 81 and obj.model_task().seq_len == L + 1 and obj.model_task().vocab_size == V
    per_layer = L * (3 * d * d + d * d + d * h + h * d)  # 243 x 8,192 = 1,990,656
    attention = 2 * L * L * d  # Q K^T + A V: 3,779,136
    head = L * d * V  # 225,504
    macs = applied * (per_layer + attention) + head  # 11,765,088
    assert (per_layer, attention, head, macs) == (1_990_656, 3_779_136, 225_504, 11_765_088)
    assert sample_flops(module, obj) == 3 * 2 * macs == 70_590_528
    assert step_flops(module, obj, 64) == 64 * 70_590_528


class _Plain(nn.Module):
    """A backbone without a forward_flops hook: embedding, one nn.MultiheadAttention, an output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 10)

    def forward(self, tokens):
        x = self.emb(tokens)
        return self.out(self.attn(x, x, x)[0])


def test_generic_fallback_is_six_n_d_plus_attention():
    """6 x (parameters that multiply activations) x tokens + 3 x 2 x 2 x L^2 x d per attention layer; embedding
    tables are lookups and not counted."""
    m = _Plain()
    n = (3 * 8 * 8 + 3 * 8) + (8 * 8 + 8) + (8 * 10 + 10)  # in_proj, out_proj, output layer: 378
    L = 81
    assert forward_flops(m, L) == 2 * (n * L + 2 * L * L * 8 * 1)
    obj = build_objective(build_task({"name": "sudoku"}, "task"), {"objective": "mdm"})
    assert sample_flops(m, obj) == TRAIN_FACTOR * 2 * (378 * 81 + 2 * 81 * 81 * 8)


class _Sparse(nn.Module):
    """A backbone whose output layer runs at an ``index`` (like ``hf``): records what it is asked to count."""

    inputs = ("lengths", "index")

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, float | None]] = []

    def forward_flops(self, seq_len, outputs=None):
        self.asked.append((seq_len, outputs))
        return 1000.0


def test_sparse_output_layer_counts_the_expected_masked_positions():
    """sparse_masked_loss applies the output layer at the masked positions: E[p_mask] = eps + (1 - eps) / 2 of the
    non-given ones (here 51 of 81 per row), so 51 x 0.5005 = 25.5255 positions per example."""
    task = build_task({"name": "sudoku"}, "task")
    obj = build_objective(task, {"objective": "mdm", "eps": 1e-3})
    given = np.zeros((4, 81), dtype=bool)
    given[:, :30] = True
    data = Dataset(np.zeros((4, 81), np.int64), given, np.zeros((4, 81), np.int64))
    m = _Sparse()
    assert sample_flops(m, obj) is None  # depends on the data
    assert sample_flops(m, obj, data) == 3000.0
    seq_len, outputs = m.asked[-1]
    assert seq_len == 81 and outputs == pytest.approx(51 * (1e-3 + 0.999 / 2))
    prog = build_objective(task, {"objective": "mdm", "masking": "progressive", "batch_size": 8})
    sample_flops(m, prog)  # progressive masking computes every position's logits
    assert m.asked[-1] == (81, 81.0)


def test_hf_backbone_counts_its_output_layer_at_the_given_positions():
    pytest.importorskip("transformers")
    from unmask.core.task import ModelSpec
    from unmask.plugins.backbones.hf import HFBackboneFactory, HFOptions

    m = HFBackboneFactory.build(HFOptions(arch="llama", hidden_size=16, n_layers=2, n_heads=2, intermediate_size=32),
                                ModelSpec(50, 20, 49, {}, False))
    d, f, V, L = 16, 32, 50, 20
    body = 2 * (4 * d * d + 3 * d * f + 2 * d) + d  # attention, SwiGLU MLP, 2 RMSNorms per layer; final norm
    full = 2 * (body * L + 2 * L * L * d * 2 + d * V * L)
    assert forward_flops(m, L) == full
    assert forward_flops(m, L, 5.0) == full - 2 * d * V * (L - 5)


# -- the trainer -----------------------------------------------------------------------------------------------------
def test_trainer_logs_cumulative_flops_and_keeps_counting_after_resume(tmp_path):
    from unmask.core.training import checkpoint as ckpt
    from unmask.core.training.trainer import Trainer, resolve_config, train

    from .test_train_checkpoint import CONFIG, tiny

    out = tmp_path / "run"
    args = tiny(out, tmp_path / "cache", steps=10)
    Trainer(resolve_config(CONFIG, args), progress=False, max_steps=5).run()  # stops after the step-5 checkpoint
    final = train(CONFIG, args, resume=True, progress=False)
    cfg = ckpt.read_config(final)
    per = config_sample_flops(cfg)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [5, 10]
    for r in steps:
        assert r["train_flops"] == pytest.approx(r["samples"] * per) and r["samples"] == 16 * r["step"]
    assert cfg["train_flops"] == pytest.approx(160 * per)
    flops_event = next(r for r in recs if r.get("event") == "flops")
    assert flops_event["sample_flops"] == per and flops_event["step_flops"] == 16 * per

    # a checkpoint written before FLOPs were counted: the resume derives them from its config and samples
    latest = ckpt.latest_checkpoint(out)
    sp, cp = latest / "state.json", latest / "config.json"
    state = json.loads(sp.read_text())
    del state["train_flops"]
    sp.write_text(json.dumps(state))
    c = json.loads(cp.read_text())  # the edited file's checksum, as a checkpoint of that time would hold it
    c["checksum"]["files"]["state.json"] = hashlib.sha256(sp.read_bytes()).hexdigest()
    cp.write_text(json.dumps(c))
    trainer = Trainer(resolve_config(CONFIG, tiny(out, tmp_path / "cache", steps=12)), resume=True, progress=False)
    assert trainer.train_flops == pytest.approx(160 * per)

    # a warm start carries the FLOPs its source had spent (here at a deeper, weight-shared stack's cost from then on)
    warm = Trainer(resolve_config(CONFIG, tiny(tmp_path / "warm", tmp_path / "cache", steps=12, **{
        "train.init_from": f'"{final}"', "backbone.repeats": "2"})), progress=False)
    assert warm.samples == 160 and warm.train_flops == pytest.approx(160 * per)
    assert warm.sample_flops > 1.5 * per


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_flops_budget_sets_the_steps(tmp_path, objective):
    """``train.flops``: the fewest steps whose FLOPs reach the budget, the schedule's length included; an MDM's
    sparse output layer makes its count depend on the data, which the budget waits for."""
    from unmask.core.training import checkpoint as ckpt
    from unmask.core.training.trainer import Trainer, lr_at, resolve_config

    from .test_train_checkpoint import CONFIG, tiny

    args = tiny(tmp_path / "probe", tmp_path / "cache", steps=1, **{"train.objective": f'"{objective}"',
                                                                    "train.augment": "false"})
    per = ckpt.read_config(Trainer(resolve_config(CONFIG, args), progress=False).run())["train_flops"] / 16
    budget = 6.5 * 16 * per  # six and a half steps of batch 16: seven steps
    args = tiny(tmp_path / "run", tmp_path / "cache", steps=1000, **{
        "train.objective": f'"{objective}"', "train.augment": "false", "train.flops": repr(budget)})
    trainer = Trainer(resolve_config(CONFIG, args), progress=False)
    cfg = ckpt.read_config(trainer.run())
    assert cfg["step"] == 7 and trainer.o.steps == 7
    assert budget <= cfg["train_flops"] < budget + 16 * per
    event = next(json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if '"event": "flops"' in x)
    assert event["budget"] == budget and event["steps"] == 7
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last_lr = [r["lr"] for r in logged if "loss" in r][-1]
    assert last_lr == pytest.approx(lr_at(6, trainer.o)) and last_lr < 0.6e-3  # the budget's cosine, not 1,000 steps
    # a cooldown longer than the steps the budget comes to is refused once they are known, before any step
    long_cool = tiny(tmp_path / "cool", tmp_path / "cache", steps=1000, **{
        "train.objective": f'"{objective}"', "train.augment": "false", "train.flops": repr(budget),
        "train.cooldown_steps": "10"})
    too_long = r"cooldown_steps = 10 is longer than the run \(train.flops = .* is 7 steps\)"
    with pytest.raises(ConfigError, match=too_long):
        Trainer(resolve_config(CONFIG, long_cool), progress=False).run()
    assert not (tmp_path / "cool" / "checkpoints").exists()


# -- curves against training FLOPs ------------------------------------------------------------------------------------
def write_run(d: Path, recs: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def records(per: float | None) -> list[dict]:
    recs = []
    for step in (50, 100):
        r = {"step": step, "loss": 1.0 / step, "samples": 16 * step, "train_seconds": float(step)}
        if per is not None:
            r["train_flops"] = 16 * step * per
        recs.append(r)
    recs.append({"step": 100, "samples": 1600, "val_margin": 0.5})
    return recs


def test_curves_against_flops_logged_derived_and_refused(tmp_path):
    config = {"task": {"name": "sudoku"}, "backbone": SMALL, "train": {"objective": "arm", "order": "row_major"}}
    arm_per = config_sample_flops(config)
    mdm = write_run(tmp_path / "mdm", records(26_158_464.0))  # logged by the trainer
    old = write_run(tmp_path / "arm", [{"event": "start", "config": config}, *records(None)])  # logged before
    tr, va = read_metrics(old)
    with_train_flops("arm", old, tr, va)
    assert [r["train_flops"] for r in tr] == [800 * arm_per, 1600 * arm_per]
    assert va[0]["train_flops"] == 1600 * arm_per
    png = tmp_path / "c.png"
    p = unmask("curves", f"mdm={mdm}", f"arm={old}", "--out", str(png), "--x", "flops")
    assert p.returncode == 0, p.stderr
    assert png.stat().st_size > 10_000
    assert "mdm: 100 steps, 1600 samples, 1.7 min of training, 4.19e10 FLOPs" in p.stdout
    assert "4.19e10 FLOPs  margin 50.0" in p.stdout
    # validation records between training records get their FLOPs interpolated
    mid = write_run(tmp_path / "mid", [*records(10.0), {"step": 75, "samples": 1200, "val_margin": 0.25}])
    assert read_metrics(mid)[1][0]["train_flops"] == pytest.approx(12_000)
    # a run resumed by a version that counts FLOPs: its earlier records get them from the config, not the first
    # logged value (validation before the first logged FLOPs is not interpolated from what comes after)
    part = records(None)[:1] + [{**records(arm_per)[1]}, {"step": 50, "samples": 800, "val_margin": 0.1},
                                records(None)[2]]
    resumed = write_run(tmp_path / "resumed", [{"event": "start", "config": config}, *part])
    tr, va = read_metrics(resumed)
    assert "train_flops" not in va[0] and va[1]["train_flops"] == 1600 * arm_per
    with_train_flops("resumed", resumed, tr, va)
    assert [r["train_flops"] for r in tr] == [800 * arm_per, 1600 * arm_per]
    assert [r["train_flops"] for r in va] == [800 * arm_per, 1600 * arm_per]
    # no train_flops and no config to derive them from: one line naming the run
    bare = write_run(tmp_path / "bare", records(None))
    with pytest.raises(InputError, match="run 'bare': its metrics.jsonl has no train_flops and no config"):
        training_curves(png, {"bare": bare}, x="flops")
    assert_one_line_error(unmask("curves", str(bare), "--out", str(png), "--x", "flops"), "has no train_flops")
    # a warm start whose source no longer holds the model it started from: the inherited FLOPs are unknown
    warm = {**config, "init_from": {"path": str(tmp_path / "gone"), "step": 10, "samples": 640}}
    gone = write_run(tmp_path / "warm", [{"event": "start", "config": warm}, *records(None)])
    with pytest.raises(InputError, match="run 'warm': .*warm-started from .*gone' after 640 samples"):
        training_curves(png, {"warm": gone}, x="flops")


def test_reach_table_compares_the_training_to_the_same_score(tmp_path):
    """The highest score every run reached, and where each first reached it (linear between validation points)."""
    from unmask.core.report import reach_table

    def run(name: str, points: list[tuple[int, float, float]]) -> Path:
        recs = []
        for step, solved, cells in points:
            recs.append({"step": step, "loss": 1.0, "samples": 10 * step, "train_flops": 1e9 * step})
            recs.append({"step": step, "samples": 10 * step, "val_margin": solved, "val_vanilla": solved / 2,
                         "val_margin_cells": cells})
        return write_run(tmp_path / name, recs)

    mdm = run("mdm", [(100, 0.2, 0.5), (200, 0.6, 0.9)])
    arm = run("arm", [(100, 0.0, 0.3), (200, 0.1, 0.5), (400, 0.3, 0.7)])
    text = reach_table({"MDM": mdm, "ARM": arm}, "flops")
    # solved: the ARM's best, 30%; the MDM passes it between 100 (20%) and 200 steps (60%): at 125
    assert "to reach 30.0% solved (the best every run reached), FLOPs: MDM 1.25e11, ARM 4e11 (3.20x)" in text
    # cells: ARM's best 70% -> MDM 100 + 100 * 20/40 = 150 steps; ARM at 400
    assert "to reach 70.0% of cells right (the best every run reached), FLOPs: MDM 1.5e11, ARM 4e11 (2.67x)" in text
    assert "samples: MDM 1,250, ARM 4,000 (3.20x)" in reach_table({"MDM": mdm, "ARM": arm}, "samples")
    never = run("never", [(100, 0.0, 0.1)])
    assert "validation % solved: not every run got above 0" in reach_table({"MDM": mdm, "N": never}, "flops")
    assert reach_table({"MDM": mdm}, "flops") == ""
    p = unmask("curves", f"MDM={mdm}", f"ARM={arm}", "--out", str(tmp_path / "c.png"), "--x", "flops")
    assert p.returncode == 0 and "FLOPs: MDM 1.25e11, ARM 4e11 (3.20x)" in p.stdout, p.stderr
