"""``unmask.load(...).generate``: a text model decodes prompts from Python as ``unmask generate`` does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from text_models import build  # noqa: E402

from unmask.core.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def llada(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llada", tmp_path_factory.mktemp("m") / "llada", seed=4)


def test_generate_matches_the_cli(capsys: pytest.CaptureFixture[str], llada: Path, tmp_path: Path) -> None:
    import unmask
    from unmask.core.errors import InputError

    model = unmask.load(str(llada), threads=1)
    assert model.task.name == "text" and model.runtime == "torch"
    one = model.generate("the cat sat", strategy="margin", gen_length=8, block_length=4, steps=4)
    assert isinstance(one, unmask.Generation) and one.nfe == 4 and isinstance(one.text, str)
    out_json = tmp_path / "r.json"
    assert main(["generate", "--model", str(llada), "--prompt", "the cat sat", "--gen-length", "8", "--block-length",
                 "4", "--steps", "4", "--strategy", "margin", "--json", str(out_json)]) == 0
    capsys.readouterr()
    assert json.loads(out_json.read_text())["rows"][0]["answer"] == one.text
    many = model.generate(["hello world", {"prefix": "def f", "suffix": "return x", "gen_length": 3}],
                          strategy="confidence_threshold:tau=0.5", gen_length=6, cfg=0.5, batch_size=2)
    assert [type(g) for g in many] == [unmask.Generation] * 2 and all(1 <= g.nfe <= 6 for g in many)
    with pytest.raises(InputError, match="steps=1 is fewer than the blocks"):
        model.generate("the cat", gen_length=8, block_length=4, steps=1)
    with pytest.raises(InputError, match="prompt 1: expected text or a dict"):
        model.generate([3])
