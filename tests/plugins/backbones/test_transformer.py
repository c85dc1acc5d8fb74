"""The transformer backbone: shapes, bidirectional vs causal, every position option, ONNX export with dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask.core.models import build_model
from unmask.core.task import build_task


@pytest.fixture(scope="module")
def task():
    return build_task({"name": "sudoku", "cache_dir": ""})


@pytest.mark.parametrize("positions", ["learned", "structure", "both", "rope", "none"])
@pytest.mark.parametrize("norm,mlp", [("layernorm", "gelu"), ("rmsnorm", "swiglu")])
def test_shapes(task, positions, norm, mlp):
    m, section = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4,
                                    "positions": positions, "norm": norm, "mlp": mlp})
    x = torch.randint(0, 10, (3, 81))
    assert m(x).shape == (3, 81, 10) and section["positions"] == positions


def test_bidirectional_vs_causal(task):
    torch.manual_seed(0)
    x = torch.randint(0, 9, (1, 81))
    y = x.clone()
    y[0, 80] = (y[0, 80] + 1) % 9
    bi, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2})
    ca, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2}, causal=True)
    with torch.no_grad():
        assert not torch.allclose(bi(x)[0, 0], bi(y)[0, 0])  # the last token influences the first
        assert torch.allclose(ca(x)[0, :80], ca(y)[0, :80], atol=1e-6)  # but never under causal attention


def assert_onnx_parity(m, example: torch.Tensor, checks: list[torch.Tensor], tmp_path) -> None:
    """Export ``m`` with a dynamic batch axis (traced on ``example``) and check onnxruntime's logits on ``checks``."""
    ort = pytest.importorskip("onnxruntime")
    m.eval()
    path = tmp_path / "m.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(m, (example,), str(path), input_names=["tokens"], output_names=["logits"],
                      dynamic_shapes={"tokens": {0: batch}}, dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in checks:
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, m(x).numpy(), atol=1e-4)


def test_onnx_export_dynamic_batch(task, tmp_path):
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2})
    assert_onnx_parity(m, torch.zeros(2, 81, dtype=torch.int64), [torch.randint(0, 10, (b, 81)) for b in (1, 5)],
                       tmp_path)


# -- relation bias ---------------------------------------------------------------------------------------------------
def _dense_relations(spec) -> torch.Tensor:
    names = sorted(spec.relations)
    a = torch.zeros(len(names), spec.seq_len, spec.seq_len)
    for r, name in enumerate(names):
        qs, ks = spec.relations[name]
        a[r, list(qs), list(ks)] = 1.0
    return a


@pytest.mark.parametrize("task_cfg", [{"name": "sudoku", "cache_dir": ""},
                                      {"name": "lo_nae_sat", "n_latent": 7, "n_obs": 23}])
def test_relation_factors_are_exact(task_cfg):
    from unmask.plugins.backbones.transformer import relation_factors

    spec = build_task(task_cfg).model_spec()
    f, g, index = relation_factors(spec.relations, spec.seq_len)
    dense = _dense_relations(spec)
    for r in range(dense.shape[0]):
        torch.testing.assert_close(f[:, index == r] @ g[:, index == r].T, dense[r], atol=1e-5, rtol=0)
    assert f.shape[1] < spec.seq_len  # low rank: the trick only pays when K is small


def test_relation_bias_equals_a_dense_attention_bias():
    """The extra query/key dimensions add exactly b_{r,h} A_r to the attention logits (checked against softmax)."""
    from unmask.plugins.backbones.transformer import relation_factors

    task = build_task({"name": "lo_nae_sat", "n_latent": 7, "n_obs": 23})
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 4,
                              "relation_bias": True, "relation_bias_init": 2.0})
    blk = m.blocks[0]
    with torch.no_grad():
        blk.rel_bias.copy_(torch.linspace(-3, 3, blk.rel_bias.numel()))
    spec = task.model_spec()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, spec.seq_len, 8, generator=g) for _ in range(3))
    got = blk._attend(q, k, v, relation_factors(spec.relations, spec.seq_len))
    bias = torch.einsum("rh,rqk->hqk", blk.rel_bias.detach().view(-1, 4), _dense_relations(spec))
    want = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + bias, -1) @ v
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-4)


def test_relation_bias_steers_attention_and_learns():
    """A large bias makes an observation's output depend on its latents far more than on an unrelated one; the bias
    receives a gradient (it is learnt) and no weight decay (it is a vector)."""
    task = build_task({"name": "lo_nae_sat", "n_latent": 7, "n_obs": 23})
    torch.manual_seed(0)
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2,
                              "positions": "none", "relation_bias": True, "relation_bias_init": 12.0})
    obs = 7  # first observation
    members = set(task.triples[0].tolist())
    other = next(i for i in range(7) if i not in members)
    x = torch.full((1, 30), task.mask_id)

    def effect(pos: int) -> float:
        y = x.clone()
        y[0, pos] = 1
        with torch.no_grad():
            return (m(y)[0, obs] - m(x)[0, obs]).abs().max().item()

    assert effect(next(iter(members))) > 50 * effect(other)
    m(torch.randint(0, 2, (4, 30))).sum().backward()
    assert all(b.rel_bias.grad is not None and b.rel_bias.grad.abs().sum() > 0 for b in m.blocks)
    assert m.blocks[0].rel_bias.ndim == 1


def test_dense_relations_match_the_factored_ones(monkeypatch):
    """Past MAX_FACTOR_RANK the bias is a dense (H, L, L) mask: same logits as the factored form, same weights."""
    import unmask.plugins.backbones.transformer as tr

    task = build_task({"name": "lo_nae_sat", "n_latent": 7, "n_obs": 23})
    cfg = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "relation_bias": True}
    for causal in (False, True):
        fac, _ = build_model(task, cfg, causal=causal)
        monkeypatch.setattr(tr, "MAX_FACTOR_RANK", 0)
        dense, _ = build_model(task, cfg, causal=causal)
        monkeypatch.undo()
        assert dense.dense_relations and not fac.dense_relations
        with torch.no_grad():
            for b in fac.blocks:
                b.rel_bias.copy_(torch.randn(b.rel_bias.shape) * 3)
        dense.load_state_dict(fac.state_dict())
        x = torch.randint(0, 3, (3, 30))
        with torch.no_grad():
            torch.testing.assert_close(dense(x), fac(x), atol=1e-5, rtol=1e-4)
            if causal:
                cache = dense.new_cache(3)
                parts = [dense.forward_cached(x[:, a:b], a, cache) for a, b in ((0, 11), (11, 12), (12, 30))]
                torch.testing.assert_close(torch.cat(parts, 1), fac(x), atol=1e-5, rtol=1e-4)


def test_relation_bias_keeps_the_kv_cache_exact(task):
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4,
                              "relation_bias": True, "relation_bias_init": 1.5}, causal=True)
    m.eval()
    x = torch.randint(0, 10, (2, 81))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(2)
        parts = [m.forward_cached(x[:, a:b], a, cache) for a, b in ((0, 40), (40, 41), (41, 81))]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


def test_relation_bias_without_relations_is_a_config_error():
    from unmask.core.errors import ConfigError

    from unmask.core.registry import backbones
    from unmask.core.task import ModelSpec

    plugin = backbones.get("transformer")
    with pytest.raises(ConfigError, match="relation_bias"):
        plugin.build(plugin.Options(relation_bias=True), ModelSpec(10, 81, 9))


def test_relation_bias_exports_to_onnx(tmp_path):
    task = build_task({"name": "lo_nae_sat", "n_latent": 7, "n_obs": 23})
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2,
                              "relation_bias": True, "relation_bias_init": 3.0})
    assert_onnx_parity(m, torch.zeros(2, 30, dtype=torch.int64), [torch.randint(0, 3, (3, 30))], tmp_path)


# -- token relations (tags that depend on the tokens) ---------------------------------------------------------------
def _tag_spec(static: bool):
    """A small spec with two token relations (and, if ``static``, one position relation): tokens 0..3 on 12
    positions; ``even`` tags a token 0/2 by its value, ``pair`` tags positions 2i, 2i+1 holding a non-zero token."""
    from unmask.core.task import ModelSpec

    L, V = 12, 5
    even = np.full((L, V), -1)
    even[:, 0], even[:, 2] = 0, 1
    pair = np.full((L, V), -1)
    pair[:, 1:4] = (np.arange(L) // 2)[:, None]
    rel = {"first": (tuple(range(1, L)), (0,) * (L - 1))} if static else {}
    return ModelSpec(V, L, 4, {}, False, rel, {"even": (2, tuple(even.ravel().tolist())),
                                              "pair": (L // 2, tuple(pair.ravel().tolist()))})


def _dense_tag_bias(m, spec, x) -> torch.Tensor:
    """Reference (B, H, L, L) bias of block 0 from the tags themselves."""
    L, V = spec.seq_len, spec.vocab_size
    names = sorted(spec.relations)
    maps = [_dense_relations(spec)[r].expand(x.shape[0], L, L) for r in range(len(names))]
    for name in sorted(spec.token_relations):
        tab = torch.tensor(spec.token_relations[name][1]).view(L, V)
        t = tab[torch.arange(L), x]  # (B, L)
        maps.append(((t[:, :, None] == t[:, None, :]) & (t[:, :, None] >= 0)).float())
    b = m.blocks[0].rel_bias.detach().view(-1, m.n_heads)
    return torch.einsum("rh,rbqk->bhqk", b, torch.stack(maps))


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dense", [False, True])
def test_token_relations_bias_attention_by_equal_tags(static, dense, monkeypatch):
    import unmask.plugins.backbones.transformer as tr
    from unmask.core.registry import backbones

    spec = _tag_spec(static)
    if dense:
        monkeypatch.setattr(tr, "MAX_FACTOR_RANK", 0)
    plugin = backbones.get("transformer")
    opts = plugin.Options(d_model=16, n_layers=1, n_heads=2, positions="none", relation_bias=True)
    torch.manual_seed(0)
    m = plugin.build(opts, spec)
    assert m.dense_relations == (dense and static)
    with torch.no_grad():
        m.blocks[0].rel_bias.copy_(torch.linspace(-2, 3, m.blocks[0].rel_bias.numel()))
    x = torch.randint(0, 5, (3, 12), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 12, 8, generator=g) for _ in range(3))
    got = m.blocks[0]._attend(q, k, v, m._relations(0, 12, 12, x))
    want = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + _dense_tag_bias(m, spec, x), -1) @ v
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-4)


def test_token_relations_need_a_bidirectional_model():
    from unmask.core.errors import ConfigError

    zebra = build_task({"name": "zebra", "cache_dir": ""})
    with pytest.raises(ConfigError, match="bidirectional"):
        build_model(zebra, {"name": "transformer", "relation_bias": True}, causal=True)


def test_token_relations_export_to_onnx(tmp_path):
    task = build_task({"name": "zebra", "max_houses": 4, "max_attributes": 4, "max_clues": 12, "cache_dir": ""})
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 1, "n_heads": 2,
                              "relation_bias": True, "relation_bias_init": 3.0})
    x = torch.as_tensor(task.generate("train", 5, 0).targets)
    assert_onnx_parity(m, x[:2], [x], tmp_path)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_math_attention_equals_sdpa(causal, with_mask):
    """The CPU bf16 attention path (plain matmuls) computes what F.scaled_dot_product_attention does."""
    import torch.nn.functional as F

    from unmask.plugins.backbones.transformer import _math_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    mask = (torch.rand(7, 7, generator=g) > 0.3) | torch.eye(7, dtype=torch.bool) if with_mask else None
    kw = {"attn_mask": mask} if with_mask else {"is_causal": causal}
    want = F.scaled_dot_product_attention(q, k, v, **kw)
    assert torch.allclose(_math_attention(q, k, v, **kw), want, atol=1e-5)
    assert torch.allclose(_math_attention(q, k, v, scale=0.1, **kw),
                          F.scaled_dot_product_attention(q, k, v, scale=0.1, **kw), atol=1e-5)


def test_bf16_autocast_forward_close_to_fp32():
    """A bf16 autocast forward on the CPU (matmul attention) gives nearly the fp32 logits."""
    from unmask.core.models import build_model
    from unmask.core.task import build_task

    task = build_task({"name": "sudoku", "minimal": False, "cache_dir": ""})
    model, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4})
    x = torch.randint(0, task.vocab_size, (4, task.seq_len), generator=torch.Generator().manual_seed(1))
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x).float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


# -- weight-shared repeats -------------------------------------------------------------------------------------------
def test_repeats_apply_the_same_blocks_again_without_new_parameters(task):
    """backbone.repeats = R: the parameters of the R = 1 model, and logits equal to running its blocks R times."""
    torch.manual_seed(0)
    opts = {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4}
    one, _ = build_model(task, opts)
    three, section = build_model(task, {**opts, "repeats": 3})
    assert section["repeats"] == 3
    assert {k: v.shape for k, v in one.state_dict().items()} == {k: v.shape for k, v in three.state_dict().items()}
    three.load_state_dict(one.state_dict())
    x = torch.randint(0, 10, (2, 81))
    with torch.no_grad():
        h = one.tok(x) + one.positional()
        for _ in range(3):
            for blk in one.blocks:
                h = blk(h, None, None)
        want = one.head(one.norm(h))
        assert torch.allclose(three(x), want, atol=1e-5)
        assert not torch.allclose(one(x), want, atol=1e-3)  # the repeats change the function


def test_repeats_keep_the_kv_cache_exact(task):
    """A causal weight-shared model caches keys/values per applied layer: chunked decoding equals a full pass."""
    torch.manual_seed(1)
    m, _ = build_model(task, {"name": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 4, "repeats": 2},
                       causal=True)
    m.eval()
    x = torch.randint(0, 10, (2, 81))
    cache = m.new_cache(2)
    assert len(cache) == 4
    with torch.no_grad():
        parts = [m.forward_cached(x[:, a:b], a, cache) for a, b in ((0, 30), (30, 31), (31, 81))]
        assert torch.allclose(torch.cat(parts, 1), m(x), atol=1e-5)
