"""Transformer encoder (bidirectional for MDMs, causal for ARMs) mapping tokens (B, L) to logits (B, L, V)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unmask.core.config import Section
from unmask.core.registry import backbones
from unmask.core.task import ModelSpec


class TransformerOptions(Section):
    d_model: Annotated[int, msgspec.Meta(ge=8, le=16384)] = 256
    n_layers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 6
    repeats: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """Apply the stack of ``n_layers`` blocks this many times with the same weights: depth (rounds of constraint
    propagation per forward pass) without parameters; a step costs ``repeats`` times as much."""
    n_heads: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    mlp_ratio: Annotated[float, msgspec.Meta(gt=0.0)] = 4.0
    dropout: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    positions: Literal["learned", "structure", "both", "rope", "none"] = "both"
    """Learned absolute embeddings, the task's structure embeddings (Sudoku: row + column + box), both, or RoPE."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    causal: bool = False
    """Causal attention (autoregressive baselines); the training objective may also force it."""
    relation_bias: bool = False
    """Add a learned bias per layer, head and task relation to the attention logits of related position pairs
    (``Task.relations``: Sudoku rows/columns/boxes, an L&O-NAE-SAT observation and its latents; and
    ``Task.token_relations``, which depend on the tokens: a Zebra clue's item and the answer cell holding it)."""
    relation_bias_init: Annotated[float, msgspec.Meta(ge=-30.0, le=30.0)] = 0.0
    """Initial value of those biases (e.g. 4: a position first attends ~e^4 times more to a related one)."""


class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _norm(kind: str, d: int) -> nn.Module:
    return _RMSNorm(d) if kind == "rmsnorm" else nn.LayerNorm(d)


def relation_factors(relations: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                     seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact low-rank factors of the 0/1 relation maps A_r (L, L): ``(F, G, index)`` with F, G (L, K) and index (K,)
    the relation of each column, such that A_r = F[:, index == r] @ G[:, index == r].T.

    A bias ``b_r`` on the attention logits of related pairs then equals extra query/key dimensions ``b_r F`` and
    ``G``, so attention keeps its fused kernel (a dense (L, L) bias with a gradient leaves it; see MAX_FACTOR_RANK).
    """
    fs, gs, idx = [], [], []
    for r, name in enumerate(sorted(relations)):
        qs, ks = relations[name]
        a = np.zeros((seq_len, seq_len))
        a[np.asarray(qs, dtype=np.int64), np.asarray(ks, dtype=np.int64)] = 1.0
        u, sv, vt = np.linalg.svd(a)
        k = int((sv > 1e-9 * max(sv[0], 1.0)).sum())
        root = np.sqrt(sv[:k])
        fs.append(u[:, :k] * root)
        gs.append(vt[:k].T * root)
        idx += [r] * k
    return (torch.tensor(np.concatenate(fs, 1), dtype=torch.float32),
            torch.tensor(np.concatenate(gs, 1), dtype=torch.float32), torch.tensor(idx, dtype=torch.int64))


def token_tag_tables(token_relations: dict[str, tuple[int, tuple[int, ...]]], seq_len: int, vocab_size: int,
                     first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The tag tables of token relations as ``(tables, index)``: tables (R_t, L * V) int64 hold, per relation (names
    sorted) and (position, token), the one-hot column of the tag (-1: none), columns of different relations
    disjoint; index (K_t,) the relation number of each column (``first`` + the relation's rank)."""
    tables, index, offset = [], [], 0
    for r, name in enumerate(sorted(token_relations)):
        n_tags, tags = token_relations[name]
        t = torch.tensor(tags, dtype=torch.int64)
        if t.numel() != seq_len * vocab_size or int(t.max()) >= n_tags or int(t.min()) < -1:
            raise ValueError(f"token relation {name!r}: tags must be seq_len * vocab_size values in -1 .. n_tags - 1")
        tables.append(torch.where(t >= 0, t + offset, -1))
        index += [first + r] * n_tags
        offset += n_tags
    return torch.stack(tables), torch.tensor(index, dtype=torch.int64)


def _rope_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    half = head_dim // 2
    inv = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    ang = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv[None, :]  # (L, half)
    return ang.cos(), ang.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, H, L, Dh); rotate the two halves of each head.
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rot = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rot, x[..., 2 * half :]], dim=-1) if x.shape[-1] > 2 * half else rot


# bf16 attention on the CPU as plain matmuls (see _math_attention); bench/train_step.py turns it off to compare
CPU_BF16_MATH_ATTENTION = True


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v as plain batched matmuls (B, H, Lq, Dh), the softmax in fp32.

    Used for bf16 training on the CPU: there PyTorch's fused flash-attention kernel has a bf16 backward about 20x
    slower than its fp32 one (Intel Xeon with AMX, one thread, the default Sudoku model: 227 ms vs 24 ms per layer
    and step), while bf16 matmuls run on AMX; with this path a bf16 training step is 1.38x the fp32 one (1.72x
    with torch.compile; results/train_step.txt). Without gradients (decoding) the fused kernel's bf16 forward is
    the faster one and stays. Same maths as ``F.scaled_dot_product_attention`` (tested against it)."""
    s = (q @ k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, H, Lq, Lk)
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    p = torch.softmax(s, dim=-1)
    if dropout_p:
        p = F.dropout(p, dropout_p)
    return p.to(v.dtype) @ v


# what a block attends with: the relation factors (F rows of the queries (Lq, K), G rows of the keys (Lk, K),
# index (K,); F and G per example (B, L, K) with token relations), or the dense 0/1 maps ((B,) R, Lq, Lk) when the
# factors would be too wide
Relations = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor
# widest factorisation (K extra query/key dimensions per head) worth its cost. bench/relation_bias.py, one CPU thread,
# L = 300, head dim 16, training step: factored 1.26x faster than dense at K = 50, 3.1x slower at K = 200 (crossover
# near K = 60); on 2 threads the dense form fell further behind (1.9x slower at K = 50)
MAX_FACTOR_RANK = 64


class Block(nn.Module):
    def __init__(self, o: TransformerOptions, causal: bool, n_relations: int = 0) -> None:
        super().__init__()
        d = o.d_model
        self.n_heads = o.n_heads
        self.causal = causal
        # learned attention-logit bias per relation and head (``relation_bias``), flat (R * H) so that it is not
        # weight-decayed like a matrix; None without relations
        self.rel_bias = (nn.Parameter(torch.full((n_relations * o.n_heads,), o.relation_bias_init))
                         if n_relations else None)
        self.norm1 = _norm(o.norm, d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = _norm(o.norm, d)
        hidden = int(round(d * o.mlp_ratio))
        self.swiglu = o.mlp == "swiglu"
        self.fc1 = nn.Linear(d, 2 * hidden if self.swiglu else hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d, bias=False)
        self.drop = nn.Dropout(o.dropout)
        self.attn_drop = o.dropout

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values (B, H, L, Dh) of ``x`` (B, L, D), RoPE applied when given."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: Relations | None,
                **kw: Any) -> torch.Tensor:
        """Scaled dot-product attention (B, H, Lq, Dh), plus the relation bias when ``rel`` is given: the queries
        gain ``b F`` and the keys ``G`` as extra dimensions (values gain zeros), so q.k gains sum_r b_r A_r."""
        dh = q.shape[-1]
        if rel is None or self.rel_bias is None:
            if (CPU_BF16_MATH_ATTENTION and q.dtype == torch.bfloat16 and q.device.type == "cpu"
                    and torch.is_grad_enabled()):
                return _math_attention(q, k, v, **kw)
            return F.scaled_dot_product_attention(q, k, v, **kw)
        if isinstance(rel, torch.Tensor):  # dense maps: an ([B,] H, Lq, Lk) bias (slower: leaves the fused kernel)
            bias = torch.einsum("rh,...rqk->...hqk", self.rel_bias.view(-1, self.n_heads), rel).to(q.dtype)
            mask = kw.pop("attn_mask", None)
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            if kw.pop("is_causal", False):
                bias = bias.masked_fill(torch.ones(bias.shape[-2:], dtype=torch.bool, device=q.device).triu(1),
                                        float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, **kw)
        f, g, index = rel  # f (Lq, K) / g (Lk, K), or per example (B, Lq, K) / (B, Lk, K)
        coef = self.rel_bias.view(-1, self.n_heads)[index].t()  # (H, K)
        B, K = q.shape[0], f.shape[-1]
        f4, g4 = (t[:, None] if t.dim() == 3 else t[None, None] for t in (f, g))  # (B or 1, 1, L, K)
        qx = (coef[None, :, None, :] * f4 * dh**0.5).to(q.dtype).expand(B, self.n_heads, -1, -1)  # (B, H, Lq, K)
        kx = g4.to(k.dtype).expand(B, self.n_heads, -1, -1)  # (B, H, Lk, K)
        vx = v.new_zeros(v.shape[:-1] + (K,))
        a = F.scaled_dot_product_attention(torch.cat([q, qx], -1), torch.cat([k, kx], -1), torch.cat([v, vx], -1),
                                           scale=dh**-0.5, **kw)
        return a[..., :dh]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                rel: Relations | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x, rope)
        a = self._attend(q, k, v, rel, is_causal=self.causal,
                         dropout_p=self.attn_drop if self.training else 0.0)  # (B, H, L, Dh)
        return self._finish(x, a)

    def forward_cached(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, kc: torch.Tensor,
                       vc: torch.Tensor, start: int, rel: Relations | None = None) -> torch.Tensor:
        """Causal attention of the T new positions ``start .. start+T-1`` over the cached keys/values before them;
        writes their keys/values into ``kc``/``vc`` (B, H, L_max, Dh). ``rel``: the relations of the new positions
        (queries) over positions ``0 .. start+T-1`` (keys), as factors or dense maps."""
        T = x.shape[1]
        q, k, v = self._qkv(x, rope)
        end = start + T
        kc[:, :, start:end] = k
        vc[:, :, start:end] = v
        mask = None
        if T > 1:  # new position i sees every cached position and the new ones up to itself
            mask = torch.arange(end, device=x.device)[None, :] <= (start + torch.arange(T, device=x.device))[:, None]
        a = self._attend(q, kc[:, :, :end], vc[:, :, :end], rel, attn_mask=mask)
        return self._finish(x, a)

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Output projection of the attention ``a`` (B, H, L, Dh), residual, then the MLP block."""
        B, L, D = x.shape
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, D)))
        h = self.fc1(self.norm2(x))
        if self.swiglu:
            g, u = h.chunk(2, dim=-1)
            h = F.silu(g) * u
        else:
            h = F.gelu(h)
        return x + self.drop(self.fc2(h))


class Transformer(nn.Module):
    """Pre-norm transformer; tokens (B, L) int64 -> logits (B, L, V)."""

    # buffers that __init__ registers when the options call for them (declared for type checkers)
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    rel_maps: torch.Tensor
    rel_f: torch.Tensor
    rel_g: torch.Tensor
    rel_index: torch.Tensor
    tok_tags: torch.Tensor
    tok_index: torch.Tensor
    tok_offset: torch.Tensor
    tok_sel: torch.Tensor

    def __init__(self, o: TransformerOptions, spec: ModelSpec) -> None:
        super().__init__()
        if o.d_model % o.n_heads:
            from unmask.core.errors import ConfigError

            raise ConfigError(f"backbone.d_model ({o.d_model}) must be divisible by backbone.n_heads ({o.n_heads})")
        self.spec = spec
        self.options = o
        d = o.d_model
        causal = o.causal or spec.causal
        self.causal = causal
        self.n_heads = o.n_heads
        self.tok = nn.Embedding(spec.vocab_size, d)
        self.use_learned = o.positions in ("learned", "both")
        self.use_structure = o.positions in ("structure", "both") and bool(spec.structure)
        if self.use_learned:
            self.pos = nn.Parameter(torch.zeros(spec.seq_len, d))
            nn.init.normal_(self.pos, std=0.02)
        self.struct_names = sorted(spec.structure) if self.use_structure else []
        self.struct_emb = nn.ModuleDict()
        for name in self.struct_names:
            n_cls, ids = spec.structure[name]
            self.struct_emb[name] = nn.Embedding(n_cls, d)
            self.register_buffer(f"ids_{name}", torch.tensor(ids, dtype=torch.int64), persistent=False)
        self.rope = o.positions == "rope"
        if self.rope:
            cos, sin = _rope_tables(spec.seq_len, d // o.n_heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        n_rel = 0
        self.dense_relations = False
        self.n_static_relations = self.n_token_relations = 0
        if o.relation_bias:
            from unmask.core.errors import ConfigError

            if not spec.relations and not spec.token_relations:
                raise ConfigError("backbone.relation_bias = true needs a task with relations (this task's "
                                  "Task.relations() and token_relations() are empty); set backbone.relation_bias = "
                                  "false")
            if spec.relations:
                f, g, index = relation_factors(spec.relations, spec.seq_len)
                self.n_static_relations = len(spec.relations)
                self.dense_relations = f.shape[1] > MAX_FACTOR_RANK
                if self.dense_relations:  # e.g. L&O (100, 200): rank 100 per direction
                    maps = torch.stack([f[:, index == r] @ g[:, index == r].T
                                        for r in range(self.n_static_relations)]).round()
                    self.register_buffer("rel_maps", maps, persistent=False)
                else:
                    self.register_buffer("rel_f", f, persistent=False)
                    self.register_buffer("rel_g", g, persistent=False)
                    self.register_buffer("rel_index", index, persistent=False)
            if spec.token_relations:
                if causal:
                    raise ConfigError("the task's token relations need a bidirectional model (a causal one reads "
                                      "its keys from a cache without their tokens); set backbone.relation_bias = "
                                      "false")
                tables, index = token_tag_tables(spec.token_relations, spec.seq_len, spec.vocab_size,
                                                 first=self.n_static_relations)
                self.n_token_relations = len(spec.token_relations)
                self.register_buffer("tok_tags", tables, persistent=False)
                self.register_buffer("tok_index", index, persistent=False)
                self.register_buffer("tok_offset", torch.arange(spec.seq_len) * spec.vocab_size, persistent=False)
                if self.dense_relations:  # (R_t, K_t): which tag columns make up each token relation's dense map
                    rel_no = torch.arange(self.n_static_relations, self.n_static_relations + self.n_token_relations)
                    self.register_buffer("tok_sel", (index[None, :] == rel_no[:, None]).float(), persistent=False)
            n_rel = self.n_static_relations + self.n_token_relations
        self.drop = nn.Dropout(o.dropout)
        self.blocks = nn.ModuleList(Block(o, causal, n_rel) for _ in range(o.n_layers))
        self.repeats = o.repeats
        self.norm = _norm(o.norm, d)
        self.head = nn.Linear(d, spec.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def positional(self) -> torch.Tensor | None:
        """(L, D) sum of position/structure embeddings, or None."""
        pe = self.pos if self.use_learned else None
        for name in self.struct_names:
            e = self.struct_emb[name](getattr(self, f"ids_{name}"))
            pe = e if pe is None else pe + e
        return pe

    def _relations(self, q0: int, q1: int, k1: int, tokens: torch.Tensor | None = None) -> Relations | None:
        """What the blocks attend with for query positions ``q0 .. q1-1`` over key positions ``0 .. k1-1``; token
        relations (bidirectional models only: ``q0 = 0``, ``q1 = k1 = L``) need the ``tokens`` (B, L)."""
        if not self.n_token_relations:
            if not self.n_static_relations:
                return None
            if self.dense_relations:
                return self.rel_maps[:, q0:q1, :k1]
            return self.rel_f[q0:q1], self.rel_g[:k1], self.rel_index
        assert tokens is not None and q0 == 0 and q1 == k1 == tokens.shape[1]
        L = tokens.shape[1]
        tags = self.tok_tags[:, self.tok_offset[:L] + tokens]  # (R_t, B, L): column of each position's tag, or -1
        ft = (tags[..., None] == torch.arange(self.tok_index.numel(), device=tokens.device)).any(0)
        ft = ft.to(torch.float32)  # (B, L, K_t) one-hot of the tags: equal tags <=> ft ft^T = 1
        if self.dense_relations:
            maps = torch.einsum("bqk,rk,blk->brql", ft, self.tok_sel, ft)  # (B, R_t, L, L)
            static = self.rel_maps[:, :L, :L].expand(tokens.shape[0], -1, -1, -1)
            return torch.cat([static, maps], 1)
        if not self.n_static_relations:
            return ft, ft, self.tok_index
        B = tokens.shape[0]
        return (torch.cat([self.rel_f[:L].expand(B, -1, -1), ft], -1), torch.cat([self.rel_g[:L].expand(B, -1, -1),
                ft], -1), torch.cat([self.rel_index, self.tok_index]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        x = self.tok(tokens)  # (B, L, D)
        pe = self.positional()
        if pe is not None:
            x = x + pe[:L]
        x = self.drop(x)
        rope = (self.rope_cos[:L], self.rope_sin[:L]) if self.rope else None
        rel = self._relations(0, L, L, tokens)
        for blk in self._stack():
            x = blk(x, rope, rel)
        return self.head(self.norm(x))  # (B, L, V)

    def forward_flops(self, seq_len: int, outputs: float | None = None) -> float:
        """FLOPs (2 x multiply-accumulates) of one forward pass over one sequence of ``seq_len`` tokens with logits
        at ``outputs`` positions (None: all), matrix products only (see :mod:`unmask.core.flops`). Per applied layer
        (``n_layers * repeats``): the projections, L x (3 d^2 + d^2) for q/k/v and the output, the MLP, L x d x h x
        (2 for GELU, 3 for SwiGLU's gate, up and down matrices), and attention's Q K^T and A V, 2 x L^2 x d. A
        factored relation bias widens each head's queries, keys and values by its rank K (2 x L^2 x H x K more);
        dense relation maps cost their bias, R x H x L^2 per layer, and token relations in that form their maps, R_t
        x L^2 x K_t once per pass. The output layer: outputs x d x V."""
        o, L = self.options, int(seq_len)
        d, H = o.d_model, o.n_heads
        hidden = int(round(d * o.mlp_ratio))
        proj = 4 * d * d + (3 if o.mlp == "swiglu" else 2) * d * hidden  # per token and layer
        attn = 2 * L * L * d  # Q K^T and A V, per layer
        once = 0  # per pass
        n_rel = self.n_static_relations + self.n_token_relations
        if n_rel and self.dense_relations:
            attn += n_rel * H * L * L
            if self.n_token_relations:
                once += self.n_token_relations * L * L * int(self.tok_index.numel())
        elif n_rel:
            rank = (int(self.rel_f.shape[1]) if self.n_static_relations else 0) + (
                int(self.tok_index.numel()) if self.n_token_relations else 0)
            attn += 2 * L * L * H * rank
        layers = o.n_layers * o.repeats
        head = (L if outputs is None else outputs) * d * self.spec.vocab_size
        return 2.0 * (layers * (L * proj + attn) + once + head)

    def _stack(self) -> list[nn.Module]:
        """The blocks in the order a forward pass applies them (``repeats`` times the shared stack)."""
        return list(self.blocks) * self.repeats

    # -- incremental decoding (causal models) ----------------------------------------------------------------------
    def new_cache(self, batch: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Empty key/value buffers for :meth:`forward_cached`: per applied layer (``n_layers * repeats``) two
        (batch, heads, seq_len, head_dim)."""
        if not self.causal:
            raise ValueError("a key/value cache needs a causal model (bidirectional attention sees future positions)")
        dev = device if device is not None else self.tok.weight.device
        shape = (batch, self.n_heads, self.spec.seq_len, self.tok.embedding_dim // self.n_heads)
        return [(torch.zeros(shape, device=dev, dtype=dtype), torch.zeros(shape, device=dev, dtype=dtype))
                for _ in self._stack()]

    def forward_cached(self, tokens: torch.Tensor, start: int,
                       cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Logits (B, T, V) of the tokens (B, T) at positions ``start .. start+T-1``, given that ``cache`` holds the
        keys/values of positions ``0 .. start-1`` (same for every row); equals ``forward(full)[:, start:start+T]``."""
        T = tokens.shape[1]
        end = start + T
        if not 0 <= start < end <= self.spec.seq_len:
            raise ValueError(f"positions {start}..{end - 1} are outside the model's {self.spec.seq_len}")
        x = self.tok(tokens)
        pe = self.positional()
        if pe is not None:
            x = x + pe[start:end]
        rope = (self.rope_cos[start:end], self.rope_sin[start:end]) if self.rope else None
        rel = self._relations(start, end, end)
        for blk, (kc, vc) in zip(self._stack(), cache, strict=True):  # new_cache: one (keys, values) per block
            x = cast(Block, blk).forward_cached(x, rope, kc, vc, start, rel)
        return self.head(self.norm(x))


@backbones.register("transformer")
class TransformerBackbone:
    """Pre-norm transformer encoder: learned/structure/RoPE positions, norm and MLP choices, relation-biased attention.

    LayerNorm or RMSNorm, GELU or SwiGLU; optionally a learned attention bias along the task's relations."""

    Options = TransformerOptions
    name = "transformer"

    @staticmethod
    def build(options: TransformerOptions, spec: ModelSpec) -> nn.Module:
        return Transformer(options, spec)
