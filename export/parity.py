"""Parity of an exported engine against the PyTorch model, on real task inputs.

Inputs are task puzzles (``task.generate("test", n, seed)``): half as posed, half as solutions with a random
fraction (5-95 %) of positions masked, so early, middle and late decoding states are all covered. Three numbers are
measured, all with the mask token's column excluded (the decode loop never picks it):

* ``max_abs_diff``: the largest absolute logit difference, enforced to be <= ``atol + rtol * max|logit|``
  (the tolerance of the artifact's precision, :data:`TOLERANCES`);
* ``argmax_agreement``: the share of masked positions whose most likely token is the same;
* ``margin_agreement``: the share of rows whose highest-margin masked position (the one margin decoding commits
  first, Kim et al. 2025, Sec. 4.1) is the same.

A disagreement is allowed only where the reference itself is a near tie that the tolerance can flip: an argmax whose
top-2 logit gap is < 2 tol, or a margin winner whose reference margin is within 4 (e^{2 tol} - 1) of the best (each
probability moves by at most a factor e^{+-2 tol} when every logit moves by at most tol). Any other disagreement is a
real behaviour change and fails the check; so does agreement below the precision's floor (``min_argmax``,
``min_margin``), which is what binds for int8, whose logit bound is loose.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unmask.core.errors import CheckpointError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_argmax: float  # least share of masked positions with the same argmax
    min_margin: float  # least share of rows with the same top-margin position


    def bound(self, scale: float) -> float:
        return self.atol + self.rtol * scale


# fp32: the same math in another kernel library (reassociation only; measured ~1e-5 on logits of magnitude 10).
# fp16/bf16: 10/7 mantissa bits through every layer (fp16 measured 0.04 at magnitude 10). int8: dynamic per-tensor
# weight quantization (measured 0.65 and 1.6 at magnitudes 10 and 11.5 on two checkpoints of the default model, 96 %
# argmax agreement): its logit bound is loose, so the agreement floors are what guard it.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_argmax=0.999, min_margin=0.95),
    "fp16": Tolerance(atol=2e-2, rtol=1e-2, min_argmax=0.99, min_margin=0.90),
    "bf16": Tolerance(atol=1e-1, rtol=4e-2, min_argmax=0.97, min_margin=0.85),
    "int8": Tolerance(atol=5e-1, rtol=2.5e-1, min_argmax=0.90, min_margin=0.80),
}
PARITY_ROWS = 64
TEXT_PARITY_ROWS = 16  # rows of a text model's parity check (each up to 48 positions, most of them masked)
PARITY_SEED = 20250


def parity_inputs(task: Any, n: int = PARITY_ROWS, seed: int = PARITY_SEED) -> torch.Tensor:
    """(n, L) int64 task inputs: posed puzzles and partly masked solutions (deterministic from ``seed``)."""
    data = task.generate("test", n, seed)
    rng = np.random.default_rng(seed)
    x = data.inputs.copy()
    full = data.targets if data.targets is not None else data.inputs
    half = n // 2
    for i in range(half, n):
        ratio = rng.uniform(0.05, 0.95)
        mask = rng.random(x.shape[1]) < ratio
        mask[rng.integers(x.shape[1])] = True  # at least one masked position per row
        x[i] = np.where(mask, task.mask_id, full[i])
    return torch.from_numpy(x.astype(np.int64))


def text_parity_inputs(vocab_size: int, mask_id: int, seq_len: int, n: int = 16, seed: int = PARITY_SEED,
                       width: int = 48) -> dict[str, torch.Tensor]:
    """Inputs of a text model's parity check (deterministic from ``seed``): ``tokens`` (n, L) random ids, each row
    right-padded after its ``lengths`` (n,) real tokens (the padding holds random ids too: the model must ignore it),
    5-95 % of a row's real positions masked, and ``index`` (n, K): each row's masked positions (a row with fewer
    than K repeats its first). L = min(``width``, ``seq_len``); task data is not needed (a Hugging Face directory
    has none)."""
    g = torch.Generator().manual_seed(seed)
    L = max(2, min(width, seq_len))
    tokens = torch.randint(0, vocab_size, (n, L), generator=g)
    tokens[tokens == mask_id] = (mask_id + 1) % vocab_size
    lengths = torch.randint(max(1, L // 3), L + 1, (n,), generator=g)
    lengths[0] = L  # one row fills the whole width
    real = torch.arange(L)[None, :] < lengths[:, None]  # (n, L)
    ratio = torch.rand((n, 1), generator=g) * 0.9 + 0.05
    masked = (torch.rand((n, L), generator=g) < ratio) & real
    masked[torch.arange(n), torch.randint(0, 1 << 30, (n,), generator=g) % lengths] = True  # >= 1 per row
    tokens[masked] = mask_id
    K = int(masked.sum(1).max())
    order = torch.where(masked, torch.arange(L)[None, :], torch.full((n, L), L)).sort(dim=1).values[:, :K]  # (n, K)
    index = torch.where(order < L, order, order[:, :1])
    return {"tokens": tokens, "lengths": lengths, "index": index}


def compare_logits(ref: torch.Tensor, got: torch.Tensor, tokens: torch.Tensor, mask_id: int,
                   tol: Tolerance) -> dict[str, Any]:
    """Parity numbers for reference logits ``ref`` and engine logits ``got`` (both (B, L, V)) on ``tokens`` (B, L)."""
    ref = ref.detach().float().cpu()
    got = got.detach().float().cpu()
    tokens = tokens.cpu()
    if got.shape != ref.shape:
        raise CheckpointError(f"engine returned logits of shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    V = ref.shape[-1]
    keep = torch.ones(V, dtype=torch.bool)
    if 0 <= mask_id < V:
        keep[mask_id] = False
    r, g = ref[..., keep], got[..., keep]  # (B, L, V-1)
    finite = bool(torch.isfinite(g).all())
    diff = (r - g).abs()
    scale = float(r.abs().max())
    bound = tol.bound(scale)
    masked = tokens == mask_id  # (B, L)

    # argmax over masked positions
    r_top2 = r.topk(2, dim=-1)
    gap = (r_top2.values[..., 0] - r_top2.values[..., 1])  # (B, L)
    same = r.argmax(-1) == g.argmax(-1)
    n_masked = int(masked.sum())
    flips = masked & ~same
    argmax_unexplained = int((flips & (gap >= 2 * bound)).sum())

    # top-margin position per row (what margin decoding commits first)
    def margins(x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(x, dim=-1).topk(2, dim=-1).values
        return (p[..., 0] - p[..., 1]).masked_fill(~masked, -1.0)  # (B, L)

    mr, mg = margins(r), margins(g)
    rows = masked.any(dim=1)
    pick_r, pick_g = mr.argmax(1), mg.argmax(1)
    row_same = (pick_r == pick_g) | ~rows
    band = 4.0 * (math.exp(2.0 * bound) - 1.0)
    best = mr.gather(1, pick_r[:, None])[:, 0]
    theirs = mr.gather(1, pick_g[:, None])[:, 0]
    margin_unexplained = int((~row_same & (best - theirs >= band)).sum())
    n_rows = int(rows.sum())
    return {
        "rows": int(tokens.shape[0]),
        "masked_positions": n_masked,
        "max_abs_diff": float(diff.max()) if finite else float("inf"),
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "max_abs_logit": scale,
        "tolerance": bound,
        "tolerance_rule": f"atol {tol.atol:g} + rtol {tol.rtol:g} * max|logit|",
        "min_argmax_agreement": tol.min_argmax,
        "min_margin_agreement": tol.min_margin,
        "argmax_agreement": float(same[masked].float().mean()) if n_masked else 1.0,
        "argmax_disagreements": int(flips.sum()),
        "argmax_unexplained": argmax_unexplained,
        "margin_agreement": float(row_same[rows].float().mean()) if n_rows else 1.0,
        "margin_disagreements": int((~row_same).sum()),
        "margin_unexplained": margin_unexplained,
        "finite": finite,
    }


def passed(report: dict[str, Any]) -> bool:
    return (
        report["finite"]
        and report["max_abs_diff"] <= report["tolerance"]
        and report["argmax_unexplained"] == 0
        and report["margin_unexplained"] == 0
        and report["argmax_agreement"] >= report["min_argmax_agreement"]
        and report["margin_agreement"] >= report["min_margin_agreement"]
    )


def format_parity(report: dict[str, Any], what: str) -> str:
    r = report
    verdict = "ok" if passed(r) else "FAILED"
    return (
        f"parity {what} vs torch fp32 ({r['rows']} rows, {r['masked_positions']} masked positions): "
        f"max |dlogit| {r['max_abs_diff']:.3g} (tolerance {r['tolerance']:.3g} = {r['tolerance_rule']}), "
        f"argmax agreement {100 * r['argmax_agreement']:.2f}% (>= {100 * r['min_argmax_agreement']:g}%), "
        f"top-margin agreement {100 * r['margin_agreement']:.2f}% (>= {100 * r['min_margin_agreement']:g}%), "
        f"{r['argmax_unexplained'] + r['margin_unexplained']} disagreements beyond near-ties (0 allowed) -> {verdict}"
    )


def run_batched(engine: Any, tokens: torch.Tensor, batch: int = 64,
                extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Engine logits for ``tokens`` (and the optional inputs ``extra``, sliced alike) in chunks of ``batch`` rows, on
    the CPU as float32."""
    dev = getattr(engine, "device", torch.device("cpu"))
    outs = []
    for s in range(0, tokens.shape[0], batch):
        more = {k: v[s : s + batch].to(dev) for k, v in (extra or {}).items()}
        outs.append(engine(tokens[s : s + batch].to(dev), **more).float().cpu())
    return torch.cat(outs)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """torch's fp32 matmuls and convolutions without TF32 inside the block (restored after): TF32 rounds inputs to
    10 mantissa bits, which an fp32 parity tolerance is not meant to absorb."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_parity(reference: torch.Tensor, engine: Any, tokens: torch.Tensor, *, mask_id: int, label: str,
                 what: str, enforce: bool = True, log: Any = print,
                 extra: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Compare ``engine`` with the reference logits; print the result; raise CheckpointError if it fails.

    ``extra``: a text model's optional inputs (``lengths``, ``index``: :func:`text_parity_inputs`); with an
    ``index`` the logits are (B, K, V) and compared at those positions. An fp32 ``label`` runs torch engines with
    TF32 off (onnxruntime and TensorRT get it off from their own options).
    """
    tol = TOLERANCES[label]
    with strict_fp32() if label == "fp32" else contextlib.nullcontext():
        got = run_batched(engine, tokens, extra=extra)
    at = tokens if extra is None or "index" not in extra else tokens.gather(1, extra["index"])  # (B, K)
    report = compare_logits(reference, got, at, mask_id, tol)
    report["passed"] = passed(report)
    report["label"] = label
    if log is not None:
        log(format_parity(report, what))
    if enforce and not report["passed"]:
        raise CheckpointError(
            f"parity check failed for {what}: max |dlogit| {report['max_abs_diff']:.3g} (tolerance "
            f"{report['tolerance']:.3g}), argmax agreement {100 * report['argmax_agreement']:.2f}% (>= "
            f"{100 * tol.min_argmax:g}%), top-margin agreement {100 * report['margin_agreement']:.2f}% (>= "
            f"{100 * tol.min_margin:g}%), {report['argmax_unexplained'] + report['margin_unexplained']} disagreements "
            "beyond near-ties; the export does not behave like the checkpoint (pass --no-parity to keep it anyway)"
        )
    return report
