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


def _prompts(tmp_path: Path, n: int) -> Path:
    words = ["the cat", "a big dog sat", "hello", "one two three four", "sun", "the red hat on the mat", "ok"]
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"prompt": words[i % len(words)] + f" {i}", "answer": "x"}) + "\n"
                            for i in range(n)))
    return data


def test_out_keeps_every_finished_row_and_resume_decodes_the_rest(
        capsys: pytest.CaptureFixture[str], llada: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unmask.core.decoding import schedule

    data = _prompts(tmp_path, 9)
    flags = ["generate", "--model", str(llada), "--prompts", str(data), "--gen-length", "5", "--steps", "5",
             "--strategy", "margin", "--batch-size", "3"]
    whole = tmp_path / "whole.jsonl"
    code, out, err = run(capsys, *flags, "--out", str(whole))
    assert code == 0, err
    assert out == "" and f"9 of 9 answers in {whole}" in err and "exact match" in err
    ref = [json.loads(x) for x in whole.read_text().splitlines()]
    assert sorted(r["index"] for r in ref) == list(range(1, 10))
    assert all(set(r) == {"index", "answer", "nfe", "generated", "exact", "key"} for r in ref)

    # the same command, interrupted after its seventh pass: the rows finished by then are on disk
    part = tmp_path / "part.jsonl"
    real_step, calls = schedule.SlotTable.step, []

    def step(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(schedule.SlotTable, "step", step)
    code, _, err = run(capsys, *flags, "--out", str(part))
    assert code == 130 and "--resume" in err, err
    kept = [json.loads(x) for x in part.read_text().splitlines()]
    assert 0 < len(kept) < 9
    monkeypatch.setattr(schedule.SlotTable, "step", real_step)
    with part.open("a") as f:  # a line cut short by the interruption is decoded again
        f.write('{"index": 9, "answ')

    # without --resume the answers already there are never overwritten
    one_error(capsys, *flags, "--out", str(part), needle="--resume")
    # other settings than the rows were decoded with: named, nothing decoded
    one_error(capsys, *flags[:-4], "--strategy", "top_prob", "--batch-size", "3", "--out", str(part), "--resume",
              needle="other settings")
    code, _, err = run(capsys, *flags, "--out", str(part), "--resume", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert f"({len(kept)} kept from before)" in err
    got = sorted((json.loads(x) for x in part.read_text().splitlines()), key=lambda r: r["index"])
    assert got == sorted(ref, key=lambda r: r["index"])  # the same answers as the uninterrupted run
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["index"] for r in report["rows"]] == list(range(1, 10)) and "key" not in report["rows"][0]
    code, _, err = run(capsys, *flags, "--out", str(part), "--resume")  # nothing left
    assert code == 0 and "nothing left to decode" in err, err


def test_out_errors(capsys: pytest.CaptureFixture[str], llada: Path, tmp_path: Path) -> None:
    data = _prompts(tmp_path, 2)
    flags = ["generate", "--model", str(llada), "--prompts", str(data), "--gen-length", "3"]
    one_error(capsys, *flags, "--resume", needle="--out")
    one_error(capsys, *flags, "--out", "", needle="--out is empty")
    one_error(capsys, *flags, "--out", str(tmp_path), needle="is a directory")
    one_error(capsys, *flags, "--out", str(data), needle="--out")  # would overwrite the prompts
    same = str(tmp_path / "a.jsonl")
    one_error(capsys, *flags, "--out", same, "--json", same, needle="overwrite the other")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    one_error(capsys, *flags, "--out", str(bad), "--resume", needle="line 1 is not JSON")
    bad.write_text('{"index": 7, "key": "x"}\n')
    one_error(capsys, *flags, "--out", str(bad), "--resume", needle="no index in 1..2")
    good = tmp_path / "good.jsonl"
    code, _, err = run(capsys, *flags, "--out", str(good))
    assert code == 0, err
    first = good.read_text().splitlines()[0]
    bad.write_text(f"{first}\n{first}\n")
    one_error(capsys, *flags, "--out", str(bad), "--resume", needle="a second time")
    bad.write_text('{"index": 1, "key": "x"}\n{"index": 2, "ke')  # refused before the cut line is dropped
    one_error(capsys, *flags, "--out", str(bad), "--resume", needle="other settings")
    assert bad.read_text().endswith('"ke')
