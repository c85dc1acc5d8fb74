"""Text decoding against an independent reference of LLaDA's published sampler, batch invariance, Dream's shift and
the logits-at-candidates path, on tiny random Hugging Face models built offline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from text_models import build  # noqa: E402

from unmask.core.decoding.loop import decode  # noqa: E402
from unmask.core.decoding.runtime import open_engine  # noqa: E402
from unmask.core.decoding.schedule import decode_many  # noqa: E402
from unmask.core.strategy import build_strategy  # noqa: E402
from unmask.core.task import build_task  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text-models")
    return {
        "llada": build("llada", root / "llada", seed=1),
        "llada-vocab": build("llada", root / "llada-vocab", seed=2, llada_vocab=True, hidden=16, layers=1),
        "modernbert": build("modernbert", root / "modernbert", seed=3),
    }


# -- an independent reference: LLaDA's generate() (Nie et al. 2025, github.com/ML-GSAI/LLaDA, generate.py) ----------
def _num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, : int(remainder[i])] += 1
    return num


def llada_reference(model: Any, prompt: torch.Tensor, *, steps: int, gen_length: int, block_length: int,
                    mask_id: int, four_d: bool, score: str = "top_prob") -> torch.Tensor:
    """Low-confidence remasking over semi-autoregressive blocks with an even per-block split of the steps and
    argmax values (temperature 0), written from the published algorithm. One deviation, shared with unmask: the
    mask token's own logit is excluded from the argmax (a trained LLaDA never predicts it; a random one might)."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    P = prompt.shape[1]
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        num_transfer = _num_transfer_tokens(x[:, lo:hi] == mask_id, steps_per)
        for i in range(steps_per):
            mask_index = x == mask_id
            with torch.no_grad():
                attn = torch.ones(1, 1, x.shape[1], x.shape[1], dtype=torch.bool) if four_d else None
                logits = model(input_ids=x, attention_mask=attn).logits.float()
            logits[..., mask_id] = float("-inf")
            p = torch.softmax(logits, dim=-1)
            x0 = torch.argmax(logits, dim=-1)
            if score == "margin":
                top2 = p.topk(2, dim=-1).values
                x0_p = top2[..., 0] - top2[..., 1]
            else:
                x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf")))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, sel = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer[j, sel] = True
            x[transfer] = x0[transfer]
    return x


def _hf_model(path: Path) -> tuple[Any, bool]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type == "modernbert":
        return AutoModelForMaskedLM.from_pretrained(path).eval(), False
    return AutoModelForCausalLM.from_pretrained(path).eval(), True


def _unmask_generate(path: Path, prompts: list[str], *, steps: int, gen_length: int, block_length: int,
                     score: str = "top_prob", scheduler: str = "static", batch_size: int = 8) -> tuple[Any, Any, Any]:
    engine = open_engine(path, "torch", model=[f"task.gen_length={gen_length}"])
    task = build_task(engine.config["task"])
    data = task.rows([{"prompt": p} for p in prompts])
    strat = build_strategy({"name": score, "steps": steps, "block_size": block_length, "block_steps": "even"})
    args = (engine, torch.from_numpy(data.inputs), torch.from_numpy(data.given), strat)
    kw: dict[str, Any] = dict(mask_id=task.mask_id, generator=torch.Generator().manual_seed(0),
                              lengths=torch.from_numpy(data.meta["length"]))
    res = decode(*args, **kw) if scheduler == "static" else decode_many(*args, batch_size=batch_size, **kw)
    return res, data, task


@pytest.mark.parametrize("kind", ["llada", "modernbert"])
@pytest.mark.parametrize(("gen_length", "block_length", "steps"), [(12, 12, 12), (12, 4, 6), (16, 8, 4), (10, 5, 10)])
def test_top_prob_blocks_match_llada_reference(models: dict[str, Path], kind: str, gen_length: int,
                                               block_length: int, steps: int) -> None:
    model, four_d = _hf_model(models[kind])
    res, data, task = _unmask_generate(models[kind], ["the cat sat on the"], steps=steps, gen_length=gen_length,
                                       block_length=block_length)
    ref = llada_reference(model, torch.from_numpy(data.inputs[:, : int(data.meta["length"][0]) - gen_length]),
                          steps=steps, gen_length=gen_length, block_length=block_length, mask_id=task.mask_id,
                          four_d=four_d)
    assert torch.equal(res.tokens, ref)
    assert int(res.nfe[0]) == steps


def test_margin_matches_reference_and_llada_vocab(models: dict[str, Path]) -> None:
    """Margin through the same pipeline, and the LLaDA-sized output layer (126,464 tokens, mask id 126336)."""
    for kind, score in (("llada", "margin"), ("llada-vocab", "top_prob")):
        model, four_d = _hf_model(models[kind])
        res, data, task = _unmask_generate(models[kind], ["hello world one two"], steps=8, gen_length=8,
                                           block_length=4, score=score)
        assert task.mask_id == (126336 if kind == "llada-vocab" else task.tokenizer.mask_token_id)
        ref = llada_reference(model, torch.from_numpy(data.inputs[:, : int(data.meta["length"][0]) - 8]), steps=8,
                              gen_length=8, block_length=4, mask_id=task.mask_id, four_d=four_d, score=score)
        assert torch.equal(res.tokens, ref), kind


PROMPTS = ["the cat", "a big red dog ran to the home and sat on the mat", "one", "hello world code line if else"]


@pytest.mark.parametrize("scheduler", ["static", "continuous"])
@pytest.mark.parametrize("strategy", ["margin", "confidence_threshold"])
def test_row_decodes_the_same_alone_and_in_a_batch(models: dict[str, Path], scheduler: str, strategy: str) -> None:
    """Prompts of different lengths share a batch through right padding masked out of attention; each row's tokens
    equal decoding it alone (under both schedulers; continuous with fewer slots than rows)."""
    batch, data, _ = _unmask_generate(models["llada"], PROMPTS, steps=12, gen_length=12, block_length=6,
                                      score=strategy, scheduler=scheduler, batch_size=3)
    for i, prompt in enumerate(PROMPTS):
        alone, one, _ = _unmask_generate(models["llada"], [prompt], steps=12, gen_length=12, block_length=6,
                                         score=strategy)
        n = int(data.meta["length"][i])
        assert torch.equal(batch.tokens[i, :n], alone.tokens[0]), prompt
        assert int(batch.nfe[i]) == int(alone.nfe[0])


def test_logits_only_at_candidates(models: dict[str, Path]) -> None:
    """The backbone applies its output layer to the positions asked for: the same logits as the full forward there."""
    engine = open_engine(models["modernbert"], "torch")
    tokens = torch.randint(6, 40, (3, 20))
    lengths = torch.tensor([20, 14, 9])
    index = torch.tensor([[0, 5, 19], [2, 3, 13], [8, 1, 0]])
    part = engine(tokens, lengths=lengths, index=index)
    full = engine(tokens, lengths=lengths)
    assert part.shape == (3, 3, engine.vocab_size)
    torch.testing.assert_close(part, full.gather(1, index[:, :, None].expand(-1, -1, full.shape[2])),
                               rtol=1e-4, atol=1e-4)


class _Oracle(torch.nn.Module):
    """A Dream-style model of one fixed answer: the hidden state at position j says which token comes at j + 1."""

    def __init__(self, answer: list[int], vocab: int) -> None:
        super().__init__()
        L = len(answer)
        self.pos = torch.nn.Embedding(L, L)
        self.pos.weight.data = torch.eye(L)
        self.lm_head = torch.nn.Linear(L, vocab, bias=False)
        w = torch.full((vocab, L), -5.0)
        for j in range(L):
            w[answer[(j + 1) % L], j] = 5.0
        self.lm_head.weight.data = w

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> Any:
        hidden = self.pos(torch.arange(input_ids.shape[1]))[None].expand(input_ids.shape[0], -1, -1)
        return type("Out", (), {"logits": self.lm_head(hidden)})()


@pytest.mark.parametrize("use_index", [True, False])
def test_dream_shift(use_index: bool) -> None:
    from unmask.core.engine import TorchEngine
    from unmask.plugins.backbones.hf import HFBackbone

    vocab, mask_id = 30, 29
    answer = [3, 7, 1, 9, 4, 4, 12, 5, 8, 2]
    prompt = 4
    results = {}
    for shift in (0, 1):
        module = HFBackbone(_Oracle(answer, vocab), four_d=False, shift=shift, vocab_size=vocab, seq_len=10)
        if not use_index:
            module.inputs = ("lengths",)  # type: ignore[misc]
        engine = TorchEngine(module, {}, vocab_size=vocab, seq_len=10)
        x = torch.tensor([answer[:prompt] + [mask_id] * (len(answer) - prompt)])
        given = torch.arange(10)[None] < prompt
        res = decode(engine, x, given, build_strategy({"name": "margin", "steps": 6}), mask_id=mask_id,
                     generator=torch.Generator().manual_seed(0))
        results[shift] = res.tokens[0].tolist()
    assert results[1] == answer
    assert results[0] != answer


def test_guidance_engine_combines_conditional_and_unconditional() -> None:
    from unmask.core.engine import FunctionEngine, GuidanceEngine

    seen: list[torch.Tensor] = []

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens.clone())
        return torch.nn.functional.one_hot(tokens, 10).float() * 2.0  # (B, L, V)

    g = GuidanceEngine(FunctionEngine(fn, 10, 4), 0.5, mask_id=9)
    tokens = torch.tensor([[1, 2, 9, 9]])
    given = torch.tensor([[True, True, False, False]])
    out = g(tokens, given=given)
    assert torch.equal(seen[0][1], torch.tensor([9, 9, 9, 9]))  # the prompt masked in the unconditional row
    c = fn(tokens)[0]
    u = fn(torch.tensor([[9, 9, 9, 9]]))[0]
    torch.testing.assert_close(out[0], u + 1.5 * (c - u))


def test_answers_cut_at_end_of_text(models: dict[str, Path]) -> None:
    engine = open_engine(models["llada"], "torch")
    task: Any = build_task(engine.config["task"])
    data = task.rows([{"prompt": "the cat", "answer": "sat on"}])
    eos = task.tokenizer.eos_token_id
    pred = data.inputs.copy()
    span = np.flatnonzero(~data.given[0])
    words = task.encode_plain("sat on")
    pred[0, span[:2]] = words
    pred[0, span[2:]] = eos
    pred[0, span[4]] = words[0]  # after the first end of text: not part of the answer
    assert task.answer(pred[0], data.given[0]) == "sat on"
    assert bool(task.score(pred, data)["solved"][0])
