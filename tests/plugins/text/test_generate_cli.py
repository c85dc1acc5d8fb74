"""``unmask generate`` end to end on tiny random models, and its one-line errors (exit status 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cli_helpers  # noqa: E402
from cli_helpers import run  # noqa: E402
from text_models import build  # noqa: E402


def one_error(capsys: pytest.CaptureFixture[str], *args: str, needle: str) -> None:
    cli_helpers.one_error(capsys, *args, needles=(needle,))


@pytest.fixture(scope="module")
def llada(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llada", tmp_path_factory.mktemp("m") / "llada", seed=4)


def test_generate_prints_answer_and_passes(capsys: pytest.CaptureFixture[str], llada: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "r.json"
    code, out, err = run(capsys, "generate", "--model", str(llada), "--prompt", "the cat sat", "--gen-length", "8",
                         "--block-length", "4", "--steps", "4", "--json", str(out_json))
    assert code == 0, err
    assert "forward passes: 4" in err and "tokens per forward: 2.00" in err
    report = json.loads(out_json.read_text())
    assert report["rows"][0]["nfe"] == 4 and report["rows"][0]["answer"] == out.strip()


def test_generate_file_with_infills_and_scores(capsys: pytest.CaptureFixture[str], llada: Path,
                                               tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": "hello world", "answer": "x"}, {"prefix": "def f", "suffix": "return x", "answer": "x y"},
            {"prompt": "a big dog", "gen_length": 3}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "generate", "--model", str(llada), "--prompts", str(data), "--gen-length", "6",
                         "--strategy", "confidence_threshold:tau=0.5", "--cfg", "0.5", "--batch-size", "2")
    assert code == 0, err
    assert out.count("--- ") == 3 and "exact match" in err


def test_generate_errors(capsys: pytest.CaptureFixture[str], llada: Path, tmp_path: Path) -> None:
    m = str(llada)
    one_error(capsys, "generate", "--model", m, "--prompt", " ".join(["the"] * 300), "--gen-length", "8",
              needle="context is 256")
    one_error(capsys, "generate", "--model", m, "--prompt", "the cat", "--gen-length", "0", needle="--gen-length")
    one_error(capsys, "generate", "--model", m, "--prompt", "the cat", "--gen-length", "400", needle="context is 256")
    one_error(capsys, "generate", "--model", m, "--prompt", "the cat", "--gen-length", "8", "--block-length", "2",
              "--steps", "2", needle="fewer than the 4 blocks")
    one_error(capsys, "generate", "--model", str(tmp_path), "--prompt", "x", needle=str(tmp_path))
    one_error(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x", needle="does not exist")
    one_error(capsys, "generate", "--model", m, "--prompt", "x", "--strategy", "nosuch", needle="nosuch")


def test_no_mask_token_needs_mask_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = build("llada", tmp_path / "nomask", mask=False)
    one_error(capsys, "generate", "--model", str(d), "--prompt", "the cat", "--gen-length", "4",
              needle="--mask-id")
    code, _, err = run(capsys, "generate", "--model", str(d), "--prompt", "the cat", "--gen-length", "4",
                       "--mask-id", str(len(json.loads((d / "tokenizer.json").read_text())["model"]["vocab"])))
    assert code == 0, err


def test_remote_code_needs_the_trust_flag(capsys: pytest.CaptureFixture[str], llada: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "remote"
    shutil.copytree(llada, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    one_error(capsys, "generate", "--model", str(d), "--prompt", "the cat", needle="--trust-remote-code")
