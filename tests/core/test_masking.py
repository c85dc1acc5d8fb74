"""Progressive masking (PUMA): pool invariants, reveal order, resume of the pool, one forward pass per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.training import checkpoint as ckpt
from unmask.core.errors import ConfigError
from unmask.core.training.masking import ProgressiveOptions, ProgressivePool, random_mask, reveal_scores
from unmask.core.training.trainer import POOL_FILE, Trainer, resolve_config

MASK = 99


def _examples(n: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.randint(0, 9, (n, L), generator=gen)
    given = torch.rand(n, L, generator=gen) < 0.3
    return x0, given


@settings(max_examples=25, deadline=None)
@given(stages=st.integers(2, 12), size=st.integers(1, 24), L=st.integers(2, 30), collapse=st.sampled_from([0.0, 0.5]),
       score=st.sampled_from(["top_prob", "margin"]), seed=st.integers(0, 2**31 - 1))
def test_pool_invariants(stages, size, L, collapse, score, seed):
    """Given positions never masked; revealed positions hold the true values; a live slot's revealed count rises on
    every step; a slot is refilled only after its last stage (or when nothing is left), at stage 0."""
    gen = torch.Generator().manual_seed(seed)
    pool = ProgressivePool(ProgressiveOptions(stages=stages, collapse=collapse, score=score), size, L)
    assert pool.empty().numel() == size
    pool.refill(pool.empty(), *_examples(size, L, gen), gen)
    first = pool.stage.clone()  # the first fill spreads the stages evenly
    assert sorted(first.tolist()) == sorted((torch.arange(size) * stages // size).tolist())
    for _ in range(3 * stages):
        x, masked, p = pool.inputs(MASK)
        assert not (masked & pool.given).any()
        shown = ~masked
        assert torch.equal(x[shown], pool.x0[shown]) and (x[masked] == MASK).all()
        assert ((p > 0) & (p <= 1)).all()
        before, stage_before = pool.revealed.sum(1), pool.stage.clone()
        pool.advance(torch.randn(size, L, 10, generator=gen), gen)
        after = pool.revealed.sum(1)
        live = pool.stage >= 0
        assert (after[live] > before[live]).all()
        assert (pool.stage[live] > stage_before[live]).all()
        assert not (pool.revealed & pool.given).any()
        empty = pool.empty()
        if empty.numel():
            pool.refill(empty, *_examples(empty.numel(), L, gen), gen)
            assert (pool.stage[empty] == 0).all()
            n_free = (~pool.given[empty]).sum(1)
            assert (pool.revealed[empty].sum(1) <= (n_free - 1).clamp(min=0)).all()  # stage 0: below 1/K, capped


def test_advance_reveals_the_most_confident_positions():
    gen = torch.Generator().manual_seed(0)
    pool = ProgressivePool(ProgressiveOptions(stages=4), 1, 8)
    pool.refill(torch.tensor([0]), torch.arange(8)[None] % 5, torch.zeros(1, 8, dtype=torch.bool), gen)
    pool.stage[:] = 0
    pool.revealed[:] = False
    # position i is confident in proportion to i: the reveal must take the highest first
    logits = torch.zeros(1, 8, 5)
    logits[0, :, 0] = torch.arange(8).float()
    pool.advance(logits, gen)
    shown = pool.revealed[0].nonzero().flatten().tolist()
    assert shown and shown == list(range(8 - len(shown), 8))
    assert 2 <= len(shown) <= 4  # stage 1 of 4 owns [2, 4) of 8 free positions (at least one is revealed)


def test_margin_score_orders_by_top_two_gap():
    logits = torch.log(torch.tensor([[[0.5, 0.49, 0.01], [0.4, 0.1, 0.5]]]))
    assert reveal_scores(logits, "top_prob")[0].argmax() == 0  # 0.5 vs 0.5: tie broken by the first
    assert reveal_scores(logits, "margin")[0].argmax() == 1  # 0.01 vs 0.1


def test_random_mask_never_masks_given():
    gen = torch.Generator().manual_seed(1)
    t, g = _examples(64, 20, gen)
    masked, p = random_mask(t, g, 1e-3, gen)
    assert not (masked & g).any() and ((p > 0) & (p <= 1)).all()


# -- in the trainer ------------------------------------------------------------------------------------------------
def _raw(out: Path, cache: Path, steps: int, **progressive) -> dict:
    return {
        "out": str(out),
        "task": {"name": "sudoku", "minimal": False, "cache_dir": str(cache)},
        "backbone": {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2},
        "train": {"steps": steps, "batch_size": 12, "data_size": 100, "val_size": 0, "ckpt_every": 4,
                  "log_every": 4, "warmup_steps": 2, "threads": 1, "masking": "progressive",
                  "progressive": {"stages": 4, **progressive}},
    }


def _trainer(raw: dict, **kw) -> Trainer:
    return Trainer(resolve_config(None, raw=raw), progress=False, **kw)


def test_one_forward_pass_per_step(tmp_path):
    t = _trainer(_raw(tmp_path / "run", tmp_path / "cache", 6, random_fraction=0.25, warmup_steps=2))
    calls = []
    t.model.register_forward_hook(lambda *a: calls.append(1))
    t.run()
    assert len(calls) == 6
    assert t.objective.pool is not None and t.objective.pool.size == 9  # 12 - round(0.25 * 12) slots; 3 rows random each step


def test_pool_after_resume_equals_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    full = _trainer(_raw(tmp_path / "a", cache, 12, collapse=0.5))
    full.run()
    part = _trainer(_raw(tmp_path / "b", cache, 12, collapse=0.5), max_steps=8)
    part.run()
    assert (tmp_path / "b" / "checkpoints" / ckpt.checkpoint_name(8) / POOL_FILE).is_file()
    resumed = _trainer(_raw(tmp_path / "b", cache, 12, collapse=0.5), resume=True)
    resumed.run()
    for key, value in full.objective.pool.state_dict().items():
        assert torch.equal(value, resumed.objective.pool.state_dict()[key]), key
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_progressive_refused_for_arm(tmp_path):
    raw = _raw(tmp_path / "run", tmp_path / "cache", 2)
    raw["train"]["objective"] = "arm"
    with pytest.raises(ConfigError, match="masking process of the MDM objective"):
        resolve_config(None, raw=raw)


def test_random_fraction_must_leave_a_slot(tmp_path):
    raw = _raw(tmp_path / "run", tmp_path / "cache", 2, random_fraction=0.99)
    with pytest.raises(ConfigError, match="no pool slot"):
        _trainer(raw)
