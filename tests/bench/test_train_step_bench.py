"""``bench/train_step.py --config``: it times every speed option of any MDM training config (here a tiny text model
on a tiny corpus) and refuses a config of another objective."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from text_models import save_tokenizer  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "bench" / "train_step.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _config(tmp_path: Path, objective: str = "mdm") -> Path:
    save_tokenizer(tmp_path / "tok")
    texts = ["def x return y", "if x print hello world", "for x in y print x", "the cat sat on the mat"]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 4))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'[task]\nname = "text"\ntokenizer = "{tmp_path / "tok"}"\ncorpus = "{tmp_path}"\ncontext = 16\n\n'
                   '[backbone]\nname = "hf"\narch = "modernbert"\nhidden_size = 32\nn_layers = 1\nn_heads = 2\n\n'
                   f'[train]\nobjective = "{objective}"\nbatch_size = 3\n')
    return cfg


def test_times_every_option_of_a_text_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    argv = ["train_step.py", "--config", str(cfg), "--reps", "1", "--no-compile", "--threads",
            str(torch.get_num_threads())]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = capsys.readouterr().out
    assert "backbone 'hf'), batch 3 x 16 tokens" in out
    rates = dict(re.findall(r"^  (\S.*?)\s+([0-9.]+)  \([0-9.]+x fp32\)$", out, flags=re.M))
    assert set(rates) == {"fp32", "fp32, fused AdamW", "bf16 autocast, fused attention kernel (default)",
                          "bf16 autocast, matmul attention", "bf16 autocast, fused attention kernel, fused AdamW",
                          "bf16 autocast, fused attention kernel, output layer at every position"}
    assert all(float(r) > 0 for r in rates.values())
    assert out.count("profile, ") == 2


def test_refuses_another_objective(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--config", str(_config(tmp_path, "arm"))])
    with pytest.raises(SystemExit, match="trains objective 'arm'; this bench times MDM steps"):
        bench.main()
