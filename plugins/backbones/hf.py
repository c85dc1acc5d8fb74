"""Hugging Face backbones: a ``transformers`` model (a local checkpoint directory, or a fresh one built from a config)
as an unmask backbone mapping tokens to logits, with padding and logits at chosen positions only.

Which transformers class runs a checkpoint:

* ``AutoModelForMaskedLM`` where transformers has one for the config's ``model_type`` (ModernBERT, BERT, ...: the
  ModernBERT-based chat MDMs); these are bidirectional and take a (B, L) padding mask;
* ``AutoModelForCausalLM`` otherwise (Llama, Qwen2, ...): a causal class is made bidirectional by giving it a
  4-D attention mask (B, 1, L, L) that lets every position see every real (non-padding) position;
* a checkpoint that carries its own modeling code (``auto_map`` in its config: LLaDA, Dream) runs that code only
  with ``trust_remote_code = true`` (``--trust-remote-code``), through the first of its ``auto_map`` entries
  ``AutoModelForMaskedLM``, ``AutoModelForCausalLM``, ``AutoModel``; such models are bidirectional already and
  get the (B, L) padding mask.

Logits only where they are used: the decode loop passes ``index`` (B, K), and the hidden states are gathered
there *before* the output layer (a forward pre-hook on ``get_output_embeddings()``), so a step costs (B, K, V)
logits, not (B, L, V): with LLaDA's 126,464-token vocabulary, B = 32 and L = 1024, the difference between
0.5 GB and 16.6 GB of float32.

Dream (Ye et al. 2025) predicts position i from the hidden state at i - 1 (it was initialised from an
autoregressive model); ``shift = 1`` reads logits that way (``None``: 1 for ``model_type = "Dream"``, else 0).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import torch
from torch import nn

from unmask.core.config import Section
from unmask.core.errors import CheckpointError, ConfigError, InputError
from unmask.core.registry import backbones
from unmask.core.task import ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# what transformers names the classes it has for a model_type (their mappings are lazy: names, not imports)
_HEADS = ("AutoModelForMaskedLM", "AutoModelForCausalLM", "AutoModel")


class HFOptions(Section):
    path: str = ""
    """A Hugging Face model directory (config.json, weights, tokenizer) to load; empty: build a fresh model of
    ``arch`` from the options below (unmask's own text models, trained here), whose weights the checkpoint holds."""
    arch: str = "modernbert"
    """``model_type`` of a fresh model (e.g. ``modernbert``, ``llama``, ``qwen2``); ignored with ``path``."""
    hidden_size: Annotated[int, msgspec.Meta(ge=8, le=65536)] = 256
    n_layers: Annotated[int, msgspec.Meta(ge=1, le=512)] = 4
    n_heads: Annotated[int, msgspec.Meta(ge=1, le=512)] = 4
    intermediate_size: Annotated[int, msgspec.Meta(ge=0, le=262144)] = 0
    """MLP width of a fresh model (0 = 4 x hidden_size)."""
    tie_embeddings: bool = True
    """A fresh model's output layer shares the input embedding's weights (transformers' ``tie_word_embeddings``).
    Enforced after the model is built, so a model trains and loads alike whatever a transformers release defaults
    to; ignored with ``path``."""
    attention: Literal["auto", "padding", "bidirectional"] = "auto"
    """How padding and direction are told to the model: ``padding`` = a (B, L) mask for models that are
    bidirectional by themselves; ``bidirectional`` = a (B, 1, L, L) mask over the real positions, which makes a
    causal class bidirectional; ``auto`` = bidirectional for transformers' causal-LM classes, padding otherwise."""
    shift: Annotated[int, msgspec.Meta(ge=0, le=1)] | None = None
    """1: logits at i come from the hidden state at i - 1 (Dream); None: 1 for model_type "Dream", else 0."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype (``auto``: the checkpoint's ``torch_dtype``); logits are returned as float32."""
    trust_remote_code: bool = False
    """Run modeling code that the checkpoint carries (its ``auto_map``): this executes the checkpoint's Python code
    on this machine; only for checkpoints you trust."""


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """A Hugging Face model directory's config.json as a dict; one-line errors for what is not one."""
    p = Path(path)
    cfg = p / "config.json"
    if not p.is_dir():
        raise CheckpointError(f"'{p}' is not a directory; a Hugging Face model is a directory with config.json, "
                              "weights and a tokenizer")
    if not cfg.is_file():
        raise CheckpointError(f"'{p}' holds no config.json; it is not a Hugging Face model directory")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{cfg}' is not readable JSON ({type(exc).__name__}); the model directory is "
                              "damaged") from None
    if not isinstance(data, dict) or not (data.get("model_type") or data.get("architectures")):
        raise CheckpointError(f"'{cfg}' has no model_type or architectures; it is not a Hugging Face model config")
    return data


def is_hf_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face model directory (and not one of unmask's own model directories)."""
    try:
        data = read_hf_config(path)
    except CheckpointError:
        return False
    return not str(data.get("format", "")).startswith("unmask-model")


def _transformers() -> Any:
    """transformers, offline (models come from local directories only) and without its loading progress bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise InputError("Hugging Face models need the transformers package: pip install 'unmask[text]'") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def _head_class(config: Any, remote: bool) -> tuple[str, bool]:
    """(the Auto class to load ``config`` with, whether that class is a causal LM transformers ships)."""
    _transformers()
    auto_map = getattr(config, "auto_map", None) or {}
    if remote:
        for head in _HEADS:
            if head in auto_map:
                return head, False
    from transformers.models.auto import modeling_auto as ma

    mtype = getattr(config, "model_type", "")
    if mtype in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "AutoModelForMaskedLM", False
    if mtype in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "AutoModelForCausalLM", True
    raise ConfigError(f"transformers has no masked-LM or causal-LM class for model_type '{mtype}'; a model with its "
                      "own code needs trust_remote_code (--trust-remote-code)")


def load_hf_config(path: str, trust_remote_code: bool) -> Any:
    """``AutoConfig`` of a local model directory; refuses a checkpoint with its own code unless trusted."""
    raw = read_hf_config(path)
    if raw.get("auto_map") and not trust_remote_code:
        classes = ", ".join(sorted(raw["auto_map"]))
        raise CheckpointError(f"'{path}' carries its own modeling code (auto_map: {classes}); pass "
                              "--trust-remote-code to run it (it executes that Python code on this machine)")
    tf = _transformers()
    try:
        return tf.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"transformers cannot read the config of '{path}': "
                              f"{' '.join(str(exc).split())[:200]}") from None


class HFBackbone(nn.Module):
    """A transformers model as an unmask backbone: ``forward(tokens, lengths=None, index=None)`` -> logits (B, L, V),
    or (B, K, V) at ``index`` (B, K); rows are right-padded to L with ``lengths`` (B,) real tokens each."""

    inputs = ("lengths", "index")

    def __init__(self, model: nn.Module, *, four_d: bool, shift: int, vocab_size: int, seq_len: int) -> None:
        super().__init__()
        self.model = model
        self.four_d = four_d
        self.shift = int(shift)
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self._take: torch.Tensor | None = None  # (B, K) hidden-state positions for the pre-hook, during a forward
        getter: Any = getattr(model, "get_output_embeddings", None)
        out = getter() if callable(getter) else None
        self._gathers = isinstance(out, nn.Module)
        if self._gathers:
            assert isinstance(out, nn.Module)
            out.register_forward_pre_hook(self._gather_hidden)
        else:
            warnings.warn(f"{type(model).__name__} names no output layer (get_output_embeddings); logits are computed "
                          "at every position and gathered after it (more memory)", stacklevel=2)

    def forward_flops(self, seq_len: int, outputs: float | None = None) -> float:
        """FLOPs of one forward pass over one sequence (see :mod:`unmask.core.flops`): 2 x the parameters that
        multiply activations x tokens, attention's 2 x 2 x L^2 x hidden_size per layer, and the output layer at
        ``outputs`` positions only (None: all), as the gathered pre-hook computes it."""
        from unmask.core.flops import attention_shape, matmul_parameters

        getter: Any = getattr(self.model, "get_output_embeddings", None)
        out = getter() if callable(getter) else None
        d, layers = attention_shape(self.model)
        L = int(seq_len)
        if not (self._gathers and isinstance(out, nn.Linear)):
            return 2.0 * (matmul_parameters(self.model) * L + 2 * L * L * d * layers)
        head = out.weight.numel() + (out.bias.numel() if out.bias is not None else 0)
        body = matmul_parameters(self.model) - head
        return 2.0 * (body * L + 2 * L * L * d * layers + head * (L if outputs is None else outputs))

    def _gather_hidden(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        take = self._take
        if take is None or not args:
            return None
        hidden = args[0]  # (B, L, D)
        if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or hidden.shape[0] != take.shape[0]:
            raise RuntimeError(f"the output layer got {getattr(hidden, 'shape', type(hidden))}, not (B, L, D) hidden "
                               "states")
        idx = take[:, :, None].expand(-1, -1, hidden.shape[2])
        return (hidden.gather(1, idx), *args[1:])

    def _mask(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
        B, L = tokens.shape
        if lengths is None and not self.four_d:
            return None
        real = torch.ones((B, L), dtype=torch.bool, device=tokens.device) if lengths is None else (
            torch.arange(L, device=tokens.device)[None, :] < lengths[:, None])  # (B, L)
        if self.four_d:
            return real[:, None, None, :].expand(B, 1, L, L)  # every query sees every real key
        return real.long()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        mask = self._mask(tokens, lengths)
        take = None if index is None else (index - self.shift).clamp(min=0)  # (B, K) hidden positions
        if self._gathers:
            self._take = take
        try:
            out = self.model(input_ids=tokens, attention_mask=mask)
        finally:
            self._take = None
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, L|K, V)
        if logits.shape[-1] > self.vocab_size:  # a padded output layer: never commit an id past the vocabulary
            logits = logits[..., : self.vocab_size]
        if take is not None and not self._gathers:
            return logits.gather(1, take[:, :, None].expand(-1, -1, logits.shape[2]))
        if take is None and self.shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position i from hidden i - 1
        return logits


def open_pretrained(path: str, options: HFOptions) -> tuple[HFBackbone, Any]:
    """(backbone, transformers config) for the model directory ``path``."""
    config = load_hf_config(path, options.trust_remote_code)
    remote = bool(getattr(config, "auto_map", None)) and options.trust_remote_code
    head, causal = _head_class(config, remote)
    tf = _transformers()
    dtype: Any = "auto" if options.dtype == "auto" else DTYPES[options.dtype]
    try:
        model = getattr(tf, head).from_pretrained(path, trust_remote_code=options.trust_remote_code,
                                                  local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"transformers cannot load the weights of '{path}' as {head}: "
                              f"{' '.join(str(exc).split())[:240]}") from None
    model.eval()
    return _wrap(model, config, options, causal), config


def _wrap(model: nn.Module, config: Any, options: HFOptions, causal: bool) -> HFBackbone:
    four_d = causal if options.attention == "auto" else options.attention == "bidirectional"
    shift = options.shift if options.shift is not None else int(getattr(config, "model_type", "") == "Dream")
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    ctx = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "max_sequence_length", 0) or 0)
    return HFBackbone(model, four_d=four_d, shift=shift, vocab_size=vocab, seq_len=ctx)


@backbones.register("hf")
class HFBackboneFactory:
    """A Hugging Face transformers model (a local directory, or a fresh ``arch`` built from the options)."""

    Options = HFOptions

    @staticmethod
    def describe(path: Path) -> dict[str, Any] | None:
        """The unmask config of a Hugging Face model directory (None when ``path`` is not one): the ``text`` task on
        its tokenizer, this backbone on its weights, a masked-diffusion objective."""
        if not is_hf_model_dir(path):
            return None
        return {"task": {"name": "text", "tokenizer": str(path)}, "backbone": {"name": "hf", "path": str(path)},
                "train": {"objective": "mdm"}}

    @staticmethod
    def build(options: HFOptions, spec: ModelSpec) -> nn.Module:
        if options.path:
            backbone, config = open_pretrained(options.path, options)
            if spec.vocab_size and backbone.vocab_size < spec.vocab_size:
                raise ConfigError(f"model '{options.path}' has {backbone.vocab_size} output tokens but its task's "
                                  f"vocabulary has {spec.vocab_size}")
            return backbone
        tf = _transformers()
        inter = options.intermediate_size or 4 * options.hidden_size
        if options.hidden_size % options.n_heads:
            raise ConfigError(f"backbone.hidden_size ({options.hidden_size}) must be a multiple of backbone.n_heads "
                              f"({options.n_heads})")
        kwargs: dict[str, Any] = dict(vocab_size=spec.vocab_size, hidden_size=options.hidden_size,
                                      num_hidden_layers=options.n_layers, num_attention_heads=options.n_heads,
                                      intermediate_size=inter, max_position_embeddings=spec.seq_len,
                                      tie_word_embeddings=options.tie_embeddings)
        if options.arch == "modernbert":  # ids it would otherwise take from its English vocabulary
            kwargs.update(pad_token_id=0, bos_token_id=None, eos_token_id=None, cls_token_id=None, sep_token_id=None,
                          mask_token_id=spec.mask_id, global_attn_every_n_layers=1)  # every layer global
        if options.arch in ("llama", "qwen2", "mistral"):
            kwargs.update(num_key_value_heads=options.n_heads, pad_token_id=None, bos_token_id=None, eos_token_id=None)
        try:
            config = tf.AutoConfig.for_model(options.arch, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"backbone.arch = '{options.arch}': {' '.join(str(exc).split())[:200]}") from None
        head, causal = _head_class(config, remote=False)
        model = getattr(tf, head).from_config(config)
        _set_tie(model, options.tie_embeddings)
        return _wrap(model, config, options, causal)


def _set_tie(model: nn.Module, tie: bool) -> None:
    """Make the output layer share (``tie``) or not share the input embedding's weights, whichever way the
    transformers release built it (releases differ for the same config)."""
    get_out: Any = getattr(model, "get_output_embeddings", None)
    get_in: Any = getattr(model, "get_input_embeddings", None)
    out = get_out() if callable(get_out) else None
    inp = get_in() if callable(get_in) else None
    if out is None or inp is None or out.weight.shape != inp.weight.shape:
        return
    if tie and out.weight is not inp.weight:
        out.weight = inp.weight
    elif not tie and out.weight is inp.weight:
        out.weight = nn.Parameter(inp.weight.detach().clone())


__all__ = ["HFBackbone", "HFOptions", "is_hf_model_dir", "open_pretrained", "read_hf_config"]
