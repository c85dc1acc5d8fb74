"""L&O-NAE-SAT task: fixed triples, data generation, the consistency metric, parsing, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.core.errors import ConfigError, InputError
from unmask.core.task import build_task
from unmask.plugins.tasks.lo_nae_sat import MASK, nae


def task(**kw):
    return build_task({"name": "lo_nae_sat", **kw})


@settings(max_examples=10, deadline=None)
@given(ts=st.integers(0, 2**32), n=st.integers(3, 60), p=st.integers(1, 300))
def test_triples_distinct_and_fixed_by_triples_seed(ts, n, p):
    a = task(n_latent=n, n_obs=p, triples_seed=ts)
    tr = a.triples
    assert tr.shape == (p, 3) and tr.min() >= 0 and tr.max() < n
    assert ((tr[:, 0] != tr[:, 1]) & (tr[:, 0] != tr[:, 2]) & (tr[:, 1] != tr[:, 2])).all()
    np.testing.assert_array_equal(tr, task(n_latent=n, n_obs=p, triples_seed=ts).triples)
    if p >= 5:
        assert (task(n_latent=n, n_obs=p, triples_seed=ts + 1).triples != tr).any()


def test_layout_and_generation():
    t = task()
    assert (t.seq_len, t.vocab_size, t.mask_id) == (300, 3, MASK)
    assert t.structure()["segment"][1] == (0,) * 25 + (1,) * 275
    d = t.generate("train", 50, 3)
    assert (d.inputs == MASK).all() and not d.given.any()
    lat, obs = d.targets[:, :25], d.targets[:, 25:]
    np.testing.assert_array_equal(obs, nae(lat, t.triples))
    np.testing.assert_array_equal(d.targets, t.generate("train", 50, 3).targets)
    assert (t.generate("test", 50, 3).targets != d.targets).any()
    assert (t.generate("train", 50, 4).targets != d.targets).any()
    # the data seed never changes the distribution (the triples)
    np.testing.assert_array_equal(task().triples, t.triples)
    with pytest.raises(InputError, match="no 'hard' split"):
        t.generate("hard", 5, 0)
    with pytest.raises(InputError):
        t.generate("valid", 5, 0)


def test_nae():
    x = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(nae(x, np.array([[0, 1, 2]]))[:, 0], [0, 0, 1, 1])


def test_score_consistent_and_always_one():
    t = task()
    d = t.generate("test", 2000, 0)
    s = t.score(d.targets, d)
    assert np.allclose(s["solved"], 1.0) and s["all_consistent"].all()
    # uniform latents, every observation guessed 1: consistent with probability 3/4
    guess = d.targets.copy()
    guess[:, 25:] = 1
    s = t.score(guess, d)
    assert abs(s["solved"].mean() - 0.75) < 0.01 and np.allclose(s["cell_accuracy"], s["solved"])
    # one wrong observation costs 1/P; a non-bit latent makes its observations inconsistent
    bad = d.targets[:1].copy()
    bad[0, 25] = 1 - bad[0, 25]
    s = t.score(bad, d.take([0]))
    assert np.isclose(s["solved"][0], 1 - 1 / 275) and not s["all_consistent"][0]
    bad = d.targets[:1].copy()
    bad[0, 0] = MASK
    assert t.score(bad, d.take([0]))["solved"][0] < 1


def test_augment_keeps_consistency():
    t = task()
    d = t.generate("train", 200, 1)
    a = t.augment(d, np.random.default_rng(0))
    assert np.allclose(t.score(a.targets, a)["solved"], 1.0)
    flipped = (a.targets[:, :25] != d.targets[:, :25]).any(axis=1)
    assert 0.3 < flipped.mean() < 0.7
    np.testing.assert_array_equal(a.targets[:, 25:], d.targets[:, 25:])


def test_parse_format_read_file(tmp_path):
    t = task(n_latent=4, n_obs=3)
    p = t.parse("01.? | 1 . 0")
    assert p.inputs.tolist() == [[0, 1, MASK, MASK, 1, MASK, 0]]
    assert p.given.tolist() == [[True, True, False, False, True, False, True]] and p.targets is None
    assert t.format(p.inputs[0]) == "01.. | 1.0"
    np.testing.assert_array_equal(t.parse(t.format(p.inputs[0])).inputs, p.inputs)
    with pytest.raises(InputError, match="bad character 'x'"):
        t.parse("01x1|110")
    with pytest.raises(InputError, match="6 symbols, expected 7"):
        t.parse("0101|11")
    f = tmp_path / "seqs.txt"
    f.write_text("# two sequences\n0101|110\n\n....|...\n")
    r = t.read_file(str(f))
    assert r.inputs.shape == (2, 7) and r.given[0].all() and not r.given[1].any()
    with pytest.raises(InputError, match="not found"):
        t.read_file(str(tmp_path / "nope.txt"))


def test_options_validated():
    with pytest.raises(ConfigError):
        task(n_latent=2)
    with pytest.raises(ConfigError):
        task(n_obs=0)


def test_train_smoke(tmp_path):
    from unmask.core.training.trainer import train

    out = train("configs/lo_nae_sat-cpu.toml", [f'out="{tmp_path / "run"}"', "train.steps=5", "train.data_size=200",
                                                "train.val_size=0", "train.batch_size=16", "train.threads=1"],
                progress=False)
    assert out.is_dir() and any(out.iterdir())


def test_triple_features_name_each_observations_latents():
    t = task(n_latent=6, n_obs=10, triple_features=True)
    s = t.structure()
    assert set(s) == {"segment", "latent", "member0", "member1", "member2"}
    assert all(len(ids) == t.seq_len and n_cls == 7 for n_cls, ids in (s[k] for k in s if k != "segment"))
    members = np.array([s[f"member{k}"][1] for k in range(3)]).T  # (L, 3)
    assert (members[:6] == 6).all() and list(s["latent"][1][:6]) == list(range(6))
    assert (np.array(s["latent"][1][6:]) == 6).all()
    np.testing.assert_array_equal(members[6:], np.sort(t.triples, axis=1))
    assert set(task(n_latent=6, n_obs=10).structure()) == {"segment"}  # off by default (the paper's setting)


def test_diagnostics_tell_a_rule_aware_model_from_a_blind_one():
    import torch

    t = task(n_latent=8, n_obs=40)

    def logits_of(probs_fn):
        def engine(tokens: torch.Tensor) -> torch.Tensor:
            x = tokens.numpy()
            p1 = probs_fn(x)  # (B, L) probability of a 1
            return torch.as_tensor(np.log(np.stack([1 - p1, p1, np.full_like(p1, 1e-9)], -1) + 1e-12))
        return engine

    def oracle(x):  # knows the rule: observations from the shown latents; no inference of latents
        p1 = np.full(x.shape, 0.5)
        p1[:, t.N:] = nae(np.clip(x[:, : t.N], 0, 1), t.triples)
        return p1

    def blind(x):  # marginals only
        p1 = np.full(x.shape, 0.5)
        p1[:, t.N:] = 0.75
        return p1

    codes = ((np.arange(2**t.N)[:, None] >> np.arange(t.N)) & 1)  # every latent assignment
    obs_of_codes = nae(codes, t.triples)

    def bayes(x):  # knows the rule and infers: exact posterior marginals of the masked latents given what is shown
        p1 = oracle(x)
        for b, row in enumerate(x):
            shown = row[: t.N] != t.mask_id
            ok = (codes[:, shown] == row[: t.N][shown]).all(1) & (obs_of_codes == row[t.N:]).all(1)
            p1[b, : t.N] = codes[ok].mean(0)
        return p1

    good = t.diagnostics(logits_of(oracle), 400, 0)
    bad = t.diagnostics(logits_of(blind), 400, 0)
    best = t.diagnostics(logits_of(bayes), 100, 0)
    assert good["obs_given_latents"] == 1.0
    assert abs(bad["obs_given_latents"] - 0.75) < 0.03
    assert abs(bad["latents_given_obs"] - 0.5) < 0.05  # no inference: latents stay coin flips
    assert best["obs_given_latents"] == 1.0 and best["latents_given_obs"] > 0.9  # 40 clauses on 8 latents
