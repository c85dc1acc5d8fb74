"""Tiny random text MDMs built offline from configs, for tests and benchmarks: stand-ins for LLaDA (Llama made
bidirectional; mask id 126336 in a 126,464-token output layer when ``llada_vocab``), Dream (Qwen2 whose logits at i
are read from the hidden state at i - 1) and a ModernBERT masked LM, each saved as a Hugging Face model directory
with a small word-level tokenizer (mask, end-of-text and padding tokens, a chat template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = ("the a cat dog sat on mat ran to home big small red blue one two three four five six seven eight nine ten "
         "is was and or not def return x y z if else for in print hello world code line").split()
SPECIALS = ["<|pad|>", "<|endoftext|>", "<|mask|>", "<|user|>", "<|assistant|>", "<unk>"]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def save_tokenizer(out: Path, *, mask: bool = True) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS if mask else [s for s in SPECIALS if s != "<|mask|>"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|pad|>",
                                   eos_token="<|endoftext|>", mask_token="<|mask|>" if mask else None)
    fast.chat_template = CHAT
    fast.save_pretrained(str(out))
    return fast


def build(kind: str, out: Path, *, seed: int = 0, llada_vocab: bool = False, mask: bool = True,
          hidden: int = 32, layers: int = 2, context: int = 256) -> Path:
    """Save a tiny random ``kind`` ("llada", "dream", "modernbert") model directory at ``out``."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, ModernBertConfig, ModernBertForMaskedLM, Qwen2Config,
                              Qwen2ForCausalLM)

    out.mkdir(parents=True, exist_ok=True)
    tok = save_tokenizer(out, mask=mask)
    n = len(tok)
    mask_id = 126336 if llada_vocab else tok.mask_token_id if mask else n
    vocab = 126464 if llada_vocab else n + (0 if mask else 1)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=context)
    if kind == "llada":
        model: Any = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4, pad_token_id=None,
                                                  bos_token_id=None, eos_token_id=None))
    elif kind == "dream":
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=4, pad_token_id=None, bos_token_id=None,
                                             eos_token_id=None))
    elif kind == "modernbert":
        model = ModernBertForMaskedLM(ModernBertConfig(**common, pad_token_id=0, bos_token_id=None, eos_token_id=None,
                                                       cls_token_id=None, sep_token_id=None, mask_token_id=mask_id,
                                                       global_attn_every_n_layers=1))
    else:
        raise ValueError(kind)
    with torch.no_grad():  # sharper logits than the init's: decisions are not near-ties
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    model.config.mask_token_id = mask_id if mask else None
    model.save_pretrained(str(out))
    cfg = json.loads((out / "config.json").read_text())
    if not mask:
        cfg.pop("mask_token_id", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out
