"""L&O-NAE-SAT: N latent bits, then P observations NAE(x_a, x_b, x_c) (Kim et al. 2025, Sec. 3 and Table 1).

Sequence (``seq_len = N + P``, default N, P = 25, 275): positions ``0..N-1`` hold the latents, uniform i.i.d. bits;
position ``N + j`` holds observation j = NAE(x_a, x_b, x_c) = 1 unless the three latents of triple j are all
equal. The triples (three distinct latent indices each) are the "distribution": drawn from ``triples_seed`` (and
N, P) only, never from the data seed, and exposed as :attr:`LoNaeSat.triples` (P, 3).

Vocabulary: 0, 1 and MASK = 2. Nothing is given: the model generates whole sequences from all-mask, so
``generate`` returns all-mask inputs, ``given`` all False and a sampled sequence as targets (training data).
Metric (our reading of the paper): the fraction of generated observations consistent with the generated latents,
per example, as ``solved`` (a float in [0, 1]; the table reports its mean) and ``cell_accuracy``; writing 1 for
every observation over uniform latents scores 75% (NAE of three fair bits is 1 with probability 3/4).
``all_consistent`` (bool) says the whole sequence is consistent.

Text format (:meth:`LoNaeSat.parse`): N + P characters ``0``, ``1`` or ``.`` / ``?`` (unknown), whitespace and
``|`` ignored, e.g. the latents, ``|``, the observations; digits are given (kept), the rest is generated.
``read_file`` reads one such sequence per line (``#`` comments).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from unmask.core.config import Section
from unmask.core.errors import ConfigError, InputError
from unmask.core.files import read_text
from unmask.core.registry import tasks
from unmask.core.task import Dataset, Task

MASK = 2
_STREAM = {"train": 0x10A1, "test": 0x10E5}


class LoNaeSatOptions(Section):
    n_latent: Annotated[int, msgspec.Meta(ge=3, le=100_000)] = 25
    """N: latent bits."""
    n_obs: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 275
    """P: observations (the paper keeps N + P = 300)."""
    triples_seed: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Seed of the fixed random triples (the distribution); independent of the data seed."""
    triple_features: bool = False
    """Tell the backbone each observation's three latent indices (structure features ``latent``, ``member0..2``),
    so a small model need not discover the triples from data. The paper's model learns them (off there)."""


def nae(latents: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """(B, N) bits, (P, 3) indices -> (B, P) int64: 1 unless the three latents are all equal."""
    x = np.asarray(latents, dtype=np.int64)[:, triples]  # (B, P, 3)
    return (x.min(axis=2) != x.max(axis=2)).astype(np.int64)


def make_triples(n_latent: int, n_obs: int, seed: int) -> np.ndarray:
    """(P, 3) int64: three distinct latent indices per observation, from ``seed`` only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A5E, int(n_latent), int(n_obs)]))
    out = rng.integers(0, n_latent, size=(n_obs, 3), dtype=np.int64)
    while True:  # redraw rows with a repeated index (uniform over distinct triples)
        bad = (out[:, 0] == out[:, 1]) | (out[:, 0] == out[:, 2]) | (out[:, 1] == out[:, 2])
        if not bad.any():
            return out
        out[bad] = rng.integers(0, n_latent, size=(int(bad.sum()), 3), dtype=np.int64)


@tasks.register("lo_nae_sat")
class LoNaeSat(Task):
    """Latents-and-observations NAE-SAT: generate consistent sequences from all-mask; score = % consistent."""

    Options = LoNaeSatOptions
    options: LoNaeSatOptions
    name = "lo_nae_sat"

    def __init__(self, options: LoNaeSatOptions | None = None) -> None:
        super().__init__(options)
        if self.options.n_latent < 3:
            raise ConfigError("task.n_latent must be >= 3 (each observation reads three distinct latents)")
        self.N = self.options.n_latent
        self.P = self.options.n_obs

    vocab_size = 3
    mask_id = MASK

    @property
    def seq_len(self) -> int:
        return self.N + self.P

    @cached_property
    def triples(self) -> np.ndarray:
        """(P, 3) int64 latent indices of each observation (fixed by ``triples_seed``)."""
        t = make_triples(self.N, self.P, self.options.triples_seed)
        t.setflags(write=False)
        return t

    def structure(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        seg = (0,) * self.N + (1,) * self.P
        out = {"segment": (2, seg)}
        if self.options.triple_features:  # class N = "none" (an observation has no own index, a latent no triple)
            none_p, none_n = (self.N,) * self.P, (self.N,) * self.N
            out["latent"] = (self.N + 1, tuple(range(self.N)) + none_p)
            members = np.sort(self.triples, axis=1)
            for k in range(3):
                out[f"member{k}"] = (self.N + 1, none_n + tuple(members[:, k].tolist()))
        return out

    def relations(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``obs_latent``: each observation to its three latents; ``latent_obs``: the reverse."""
        obs = np.repeat(np.arange(self.N, self.N + self.P), 3)
        lat = self.triples.reshape(-1)
        return {"obs_latent": (tuple(obs.tolist()), tuple(lat.tolist())),
                "latent_obs": (tuple(lat.tolist()), tuple(obs.tolist()))}

    # -- data ---------------------------------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, N + P) consistent sequences with uniform latents."""
        x = rng.integers(0, 2, size=(n, self.N), dtype=np.int64)
        return np.concatenate([x, nae(x, self.triples)], axis=1)

    def generate(self, split: str, n: int, seed: int, *, progress: bool = False) -> Dataset:
        """All-mask inputs, nothing given, a sampled sequence as target. Train and test use disjoint seed streams;
        there is no "hard" split."""
        self.check_split(split, n)
        if split not in _STREAM:
            raise InputError(f"task lo_nae_sat has no '{split}' split; use train or test")
        from tqdm.auto import tqdm

        rng = np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), _STREAM[split]]))
        parts = []
        with tqdm(total=n, desc=f"lo_nae_sat {split}", unit="seq", disable=not progress, leave=False) as bar:
            for start in range(0, n, 65536):
                k = min(65536, n - start)
                parts.append(self.sample(k, rng))
                bar.update(k)
        targets = np.concatenate(parts) if parts else np.zeros((0, self.seq_len), np.int64)
        inputs = np.full_like(targets, MASK)
        return Dataset(inputs, np.zeros(targets.shape, bool), targets)

    def augment(self, batch: Dataset, rng: np.random.Generator) -> Dataset:
        """Flip every latent with probability 1/2 per example: NAE is invariant under the global flip."""
        if batch.targets is None:
            return batch
        rows = rng.random(len(batch)) < 0.5
        rows &= ~batch.given[:, : self.N].any(axis=1)  # given latents stay as they are
        flip = rows[:, None] & (np.arange(self.seq_len) < self.N)[None, :]

        def f(x: np.ndarray) -> np.ndarray:
            return np.where(flip & (x != MASK), 1 - x, x)

        return Dataset(f(batch.inputs), batch.given, f(batch.targets), dict(batch.meta))

    def _from_lines(self, lines: list[tuple[str, str]]) -> Dataset:
        L = self.seq_len
        rows = []
        for where, text in lines:
            chars = [c for c in text if not c.isspace() and c != "|"]
            bad = [c for c in chars if c not in "01.?"]
            if bad:
                raise InputError(f"{where}: bad character {bad[0]!r}; use 0, 1 and '.' or '?' for unknown")
            if len(chars) != L:
                raise InputError(f"{where}: {len(chars)} symbols, expected {L} ({self.N} latents then {self.P} "
                                 "observations)")
            rows.append([MASK if c in ".?" else int(c) for c in chars])
        inputs = np.array(rows, dtype=np.int64).reshape(-1, L)
        return Dataset(inputs, inputs != MASK, None)

    def parse(self, text: str) -> Dataset:
        return self._from_lines([("input", text)])

    def read_file(self, path: str) -> Dataset:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"sequence file '{path}' not found")
        text = read_text(p, "sequence file")  # UTF-8, a BOM accepted; another encoding names its line
        lines = [(f"{path} line {i}", ln.split("#", 1)[0]) for i, ln in enumerate(text.splitlines(), 1)]
        lines = [x for x in lines if x[1].strip()]
        if not lines:
            raise InputError(f"sequence file '{path}' holds no sequence")
        return self._from_lines(lines)

    def format(self, tokens: np.ndarray) -> str:
        t = np.asarray(tokens).reshape(-1)
        s = "".join("." if v == MASK else str(int(v)) if v in (0, 1) else "?" for v in t)
        return f"{s[: self.N]} | {s[self.N:]}"

    # -- scoring ------------------------------------------------------------------------------------------------
    def score(self, predictions: np.ndarray, data: Dataset) -> dict[str, np.ndarray]:
        """Per example: the fraction of observations equal to NAE of the generated latents (``solved`` and
        ``cell_accuracy``, floats), and ``all_consistent`` (bool). A latent or observation that is not 0/1 counts as
        inconsistent."""
        pred = np.asarray(predictions, dtype=np.int64)
        lat, obs = pred[:, : self.N], pred[:, self.N:]
        lat_ok = ((lat == 0) | (lat == 1))[:, self.triples].all(axis=2)  # (B, P)
        ok = lat_ok & (obs == nae(np.clip(lat, 0, 1), self.triples))
        frac = ok.mean(axis=1) if self.P else np.ones(len(pred))
        return {"solved": frac, "cell_accuracy": frac.copy(), "all_consistent": ok.all(axis=1)}

    # -- probes -------------------------------------------------------------------------------------------------
    def diagnostics(self, engine: Any, n: int, seed: int) -> dict[str, float]:
        """Two one-pass probes on ``n`` sampled sequences (argmax over {0, 1}):

        * ``obs_given_latents``: accuracy of the observations when every latent is shown and every observation
          masked. 1.0 once the model has found the triples and the NAE rule; 0.75 for a model blind to the latents.
        * ``latents_given_obs``: accuracy of latents 1..N-1 when every observation and latent 0 are shown (latent 0
          pins the global flip NAE cannot see, which would leave every other latent's marginal at exactly 1/2): the
          inference an observations-first order leans on. 0.5 = none; a perfect model reaches the Bayes accuracy
          (near 1 when P/N is large; lower near the satisfiability threshold, e.g. (100, 200)).
        """
        import torch

        rng = np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), 0xD1A6]))
        x = self.sample(n, rng)
        out: dict[str, float] = {}
        for name, hide in (("obs_given_latents", slice(self.N, None)), ("latents_given_obs", slice(1, self.N))):
            inp = x.copy()
            inp[:, hide] = MASK
            pred = engine(torch.as_tensor(inp))[..., :2].argmax(-1).cpu().numpy()[:, hide]
            out[name] = float((pred == x[:, hide]).mean())
        return out
