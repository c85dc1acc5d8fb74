"""ONNX export of text backbones and decoding through onnxruntime: inputs tokens (B, L), lengths (B,), index (B, K)
with dynamic B, L, K; the tokenizer travels inside the file; torch and onnxruntime give the same logits (within the
fp32 tolerance) and decode the same tokens with deterministic strategies, alone and in batches of rows of different
lengths. Two exports in all (a Hugging Face Llama made bidirectional; one of unmask's own ModernBERT text models
through ``unmask export``), each made once for the module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from text_models import build, save_tokenizer  # noqa: E402

from unmask.core.errors import ConfigError, InputError  # noqa: E402

PROMPTS = ["the cat sat on", "one two three four five six seven eight", "hello", "a big red dog ran to"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UNMASK_HOME for the module: where engines write the tokenizers they carry."""
    root = tmp_path_factory.mktemp("unmask-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNMASK_HOME", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory: pytest.TempPathFactory, home: Path) -> tuple[Path, Path, dict]:
    """(Hugging Face directory, its export, the export report): a tiny Llama read bidirectionally (LLaDA's layout)."""
    from unmask.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("text-export")
    model = build("llada", root / "llada")
    out = root / "llada.onnx"
    return model, out, export_onnx(model, out, log=None)


@pytest.fixture(scope="module")
def own_export(tmp_path_factory: pytest.TempPathFactory, home: Path) -> tuple[Path, Path]:
    """(one of unmask's own text models - a ModernBERT ``hf`` backbone with its tokenizer -, its export made by
    ``unmask export``)."""
    from unmask.core.cli import main
    from unmask.core.models import build_model
    from unmask.core.task import build_task
    from unmask.core.training.checkpoint import save_model_dir

    root = tmp_path_factory.mktemp("own-text")
    save_tokenizer(root / "tok")
    task = build_task({"name": "text", "tokenizer": str(root / "tok"), "context": 64})
    torch.manual_seed(1)
    module, section = build_model(task, {"name": "hf", "arch": "modernbert", "hidden_size": 32, "n_layers": 2,
                                         "n_heads": 4})
    with torch.no_grad():  # sharper logits: decisions are not near-ties
        for p in module.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    config = {"task": task.config_dict(), "backbone": section, "train": {"objective": "mdm"}}
    model = save_model_dir(root / "model", module.state_dict(), config, extra_files=dict(task.model_files()))
    out = root / "own.onnx"
    assert main(["export", "--model", str(model), "--onnx", str(out), "--report", str(root / "r.json")]) == 0
    return model, out


def test_graph_has_dynamic_batch_length_and_index(hf_export: tuple[Path, Path, dict]) -> None:
    import onnx

    model, out, report = hf_export
    assert report["inputs"] == ["tokens", "lengths", "index"] and report["dynamic_seq"]
    p = report["parity"]
    assert p["passed"] and p["max_abs_diff"] <= p["tolerance"] and p["argmax_agreement"] == 1.0
    proto = onnx.load(str(out))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert list(dims) == ["tokens", "lengths", "index"]
    assert all(isinstance(d, str) for ds in dims.values() for d in ds), dims  # every axis dynamic
    assert dims["tokens"][0] == dims["lengths"][0] == dims["index"][0]  # one batch axis
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in proto.graph.input)
    meta = {m.key: m.value for m in proto.metadata_props}
    assert meta["unmask.inputs"] == "lengths,index" and meta["unmask.dynamic_seq"] == "true"
    files = json.loads(meta["unmask.files"])
    assert "tokenizer.json" in files and "tokenizer_config.json" in files
    assert "config.json" in files  # transformers picks the tokenizer class from a Hugging Face config's model_type
    task = json.loads(meta["unmask_config"])["task"]  # sizes resolved: no model directory is needed to read them
    assert (task["vocab_size"], task["context"], task["mask_id"]) == (49, 256, 2) and task["stop_ids"] == [1]


def test_logits_match_torch_at_any_shape(hf_export: tuple[Path, Path, dict]) -> None:
    """torch == onnxruntime (fp32 tolerance) for several (B, L, K), padded rows, with and without an index."""
    from unmask.core.decoding.runtime import open_engine

    model, out, _ = hf_export
    ref, ort = open_engine(model, "torch", threads=1), open_engine(out, threads=1, micro_batch=2)
    assert ort.inputs == ("lengths", "index") and (ort.vocab_size, ort.seq_len, ort.mask_id) == (49, 256, 2)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for B, L, K in ((1, 5, 1), (3, 17, 4), (5, 40, 40)):  # micro-batches of 2 rows: 5 rows in three runs
        tokens = torch.randint(0, 49, (B, L), generator=g)
        lengths = torch.randint(1, L + 1, (B,), generator=g)
        lengths[0] = L
        index = torch.randint(0, L, (B, K), generator=g)
        a, b = ref(tokens, lengths=lengths, index=index), ort(tokens, lengths=lengths, index=index)
        assert b.shape == (B, K, 49) and b.dtype == torch.float32
        worst = max(worst, float((a - b).abs().max()))
        full = ort(tokens, lengths=lengths)  # no index: every position
        assert full.shape == (B, L, 49)
        torch.testing.assert_close(full.gather(1, index[:, :, None].expand(-1, -1, 49)), b, rtol=1e-4, atol=1e-4)
    assert worst < 1e-4, worst
    with pytest.raises(InputError, match="index positions must lie in 0..4"):
        ort(torch.zeros(2, 5, dtype=torch.int64), index=torch.full((2, 1), 5))
    with pytest.raises(InputError, match="lengths must lie in 1..5"):
        ort(torch.zeros(2, 5, dtype=torch.int64), lengths=torch.tensor([5, 0]))
    with pytest.raises(InputError, match="takes no 'given' input"):
        ort(torch.zeros(2, 5, dtype=torch.int64), given=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(InputError, match="up to 256 tokens, got 300"):
        ort(torch.zeros(1, 300, dtype=torch.int64))


def _decode_all(engine, task, strategy, batch_size: int):  # noqa: ANN001, ANN202
    from unmask.core.decoding.schedule import decode_many

    data = task.rows([{"prompt": p, "gen_length": task.options.gen_length + 3 * (i % 2)}
                      for i, p in enumerate(PROMPTS)])
    res = decode_many(engine, torch.from_numpy(data.inputs), torch.from_numpy(data.given), strategy,
                      mask_id=task.mask_id, generator=torch.Generator().manual_seed(0), batch_size=batch_size,
                      lengths=torch.from_numpy(data.meta["length"]))
    return res.tokens, res.nfe


@pytest.mark.parametrize("gen_length", [6, 16])
def test_decoding_through_onnxruntime_gives_torch_tokens(hf_export: tuple[Path, Path, dict], gen_length: int) -> None:
    """Same tokens and forward passes from torch and onnxruntime for top_prob and blockwise margin, with every row
    alone (batch 1) and all four rows of different lengths in one batch; the onnxruntime task reads the tokenizer
    the file carries."""
    from unmask.core.decoding.runtime import open_engine
    from unmask.core.generate import text_strategy
    from unmask.core.task import build_task

    model, out, _ = hf_export
    ref = open_engine(model, "torch", threads=1, model=[f"task.gen_length={gen_length}"])
    ort = open_engine(out, threads=1, model=[f"task.gen_length={gen_length}"])
    t_ref = build_task(ref.config["task"], "model task", model=model)
    t_ort = build_task(ort.config["task"], "model task", model=out)
    assert Path(t_ort.options.tokenizer).parent.parent == Path(__import__("os").environ["UNMASK_HOME"])
    assert t_ort.encode_prompt(PROMPTS[1]) == t_ref.encode_prompt(PROMPTS[1])
    steps = gen_length + 3
    for spec, block in (("top_prob", 0), ("margin", 4)):
        strategy = text_strategy(spec, steps, block)
        assert strategy.deterministic
        for batch_size in (1, 4):
            a_tok, a_nfe = _decode_all(ref, t_ref, strategy, batch_size)
            b_tok, b_nfe = _decode_all(ort, t_ort, strategy, batch_size)
            assert torch.equal(a_tok, b_tok), (spec, batch_size)
            assert torch.equal(a_nfe, b_nfe), (spec, batch_size)
        assert (a_tok != t_ref.mask_id).all()


def test_own_text_model_exports_and_evaluates_like_torch(own_export: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``unmask export`` on one of unmask's own text models; ``unmask eval --data`` on the .onnx file (tokenizer
    from the file) gives the model directory's answers."""
    from unmask.core.cli import main

    model, out = own_export
    report = json.loads((out.parent / "r.json").read_text())["onnx"]
    assert report["parity"]["passed"] and report["seq_len"] == 64 and report["inputs"] == ["tokens", "lengths", "index"]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "gen_length": 5 + i, "answer": "x"}) + "\n"
                            for i, p in enumerate(PROMPTS)))
    results = {}
    for name, path in (("torch", model), ("onnx", out)):
        js = tmp_path / f"{name}.json"
        code = main(["eval", "--model", str(path), "--data", str(data), "--strategies", "top_prob,margin",
                     "--steps", "8", "--batch-size", "3", "--threads", "1", "--no-progress", "--json", str(js)])
        assert code == 0, capsys.readouterr().err
        results[name] = json.loads(js.read_text())
    capsys.readouterr()

    def answers(r: dict) -> list:  # every strategy's answers and forward passes, row by row
        return [(e["strategy"], e["examples"]) for e in r["results"]]

    assert results["onnx"]["runtime"] == "onnxruntime"
    assert answers(results["torch"]) == answers(results["onnx"])
    assert [len(e) for _, e in answers(results["onnx"])] == [4, 4]


def test_python_api_generates_from_the_export_like_torch(own_export: tuple[Path, Path]) -> None:
    import unmask

    model, out = own_export
    a = unmask.load(model, threads=1).generate(PROMPTS, gen_length=6, strategy="margin", block_length=3)
    b = unmask.load(out, threads=1).generate(PROMPTS, gen_length=6, strategy="margin", block_length=3)
    assert [(g.text, g.nfe) for g in a] == [(g.text, g.nfe) for g in b]


def test_generate_cli_on_an_export(own_export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from unmask.core.cli import main

    model, out = own_export
    texts = []
    for path in (model, out):
        code = main(["generate", "--model", str(path), "--prompt", PROMPTS[0], "--gen-length", "6", "--strategy",
                     "margin", "--block-length", "3", "--threads", "1", "--no-live"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        texts.append((captured.out, captured.err.split(",")[0]))
    assert texts[0] == texts[1]


def test_task_settings_and_refusals(hf_export: tuple[Path, Path, dict]) -> None:
    from unmask.core.decoding.runtime import open_engine

    _, out, _ = hf_export
    eng = open_engine(out, threads=1, model=["task.chat=true", "task.gen_length=9"])
    assert eng.config["task"]["chat"] is True and eng.config["task"]["gen_length"] == 9
    with pytest.raises(ConfigError, match="only task settings"):
        open_engine(out, threads=1, model=["backbone.shift=1"])
    with pytest.raises(ConfigError, match="--accuracy decodes puzzles"):
        from unmask.export.onnx import export_onnx

        export_onnx(hf_export[0], out.parent / "x.onnx", accuracy_puzzles=5, log=None)
