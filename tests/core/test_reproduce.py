"""tools/reproduce.py at smoke scale: tiny models trained, evaluated, and the table written with the paper's numbers
and ours side by side; a second run reuses the models."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from unmask.core.errors import InputError
from unmask.core.reproduce import PAPER_SUDOKU, build_plan, parse_pairs, reproduce

ROOT = Path(__file__).parents[2]


def numbers(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table2_smoke_writes_both_columns_and_reuses_models(tmp_path):
    logs: list[str] = []
    sets = [f'task.cache_dir="{tmp_path / "cache"}"']
    out = reproduce(2, "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", overrides=sets,
                    progress=False, log=logs.append)
    assert out == tmp_path / "results" / "table2.md"
    text = out.read_text()
    lines = text.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("| method"))
    assert "paper % solved" in lines[head] and "ours % solved" in lines[head]
    rows = [numbers(x) for x in lines[head + 2 : head + 11]]
    assert [r[0] for r in rows] == [
        "ARM w/o ordering", "ARM with ordering", "MDM vanilla",
        "MDM top prob., Gumbel 0.5 (paper's decoding)", "MDM top prob. margin, Gumbel 0.5 (paper's decoding)",
        "MDM top prob., no noise", "MDM top prob. margin, no noise",
        "MDM top prob., Gumbel 0.1", "MDM top prob. margin, Gumbel 0.1"]
    for r, paper in zip(rows, [PAPER_SUDOKU[k] for k in ("arm_row_major", "arm_solver", "vanilla", "top_prob",
                                                         "margin")]):
        assert float(r[2]) == pytest.approx(paper)  # the paper's numbers sit beside its own decoding
    assert all(r[2] == "—" for r in rows[5:])  # no paper number for the other noise scales
    assert all(0.0 <= float(r[3]) <= 100.0 for r in rows)  # ours
    assert "## Commands" in text and "unmask train --config configs/sudoku-arm.toml" in text
    assert "--strategies arm" in text
    assert (tmp_path / "results" / "table2-noise.png").stat().st_size > 0  # % solved against the noise scale
    assert re.search(r"--strategies top_prob,margin --steps \d+ --opt noise=gumbel --opt noise_scale=0.5\n", text)
    assert re.search(r"--strategies vanilla,top_prob,margin --steps \d+\n", text)  # no noise: one command
    assert re.search(r"training time", text)
    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["rows"]) == 11 and {r["strategy"] for r in data["rows"]} == {"arm", "vanilla", "top_prob", "margin"}
    assert set(data["models"]) == {"mdm", "arm_solver", "arm_row_major"}
    assert not any(m["reused"] for m in data["models"].values())
    assert all((tmp_path / "runs" / d / "model").is_dir() for d in ("sudoku-default", "sudoku-arm",
                                                                      "sudoku-arm-row_major"))
    # a second run (Table 5 uses the same models) trains nothing
    logs.clear()
    out5 = reproduce(5, "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", overrides=sets,
                     progress=False, log=logs.append)
    assert sum("reusing" in x for x in logs) == 3 and not any("training" in x for x in logs)
    t5 = out5.read_text()
    assert "hard" in t5 and "| ARM with ordering | 42M | 32.57 |" in t5


def test_table1_smoke_one_pair(tmp_path):
    out = reproduce(1, "smoke", runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", pairs=[(25, 275)],
                    progress=False, log=lambda s: None)
    text = out.read_text()
    row = next(x for x in text.splitlines() if x.startswith("| (25, 275)"))
    cells = numbers(row)
    assert float(cells[1]) == pytest.approx(78.06) and float(cells[2]) == pytest.approx(93.76)
    # vanilla, margin, vanilla argmax, margin argmax, margin + Gumbel 0.5, top prob.
    assert all(0 <= float(c) <= 100 for c in cells[3:9])
    assert float(cells[9]) == pytest.approx(float(cells[4]) - float(cells[3]), abs=0.011)  # adaptive - vanilla
    header = next(x for x in text.splitlines() if x.startswith("| (N, P)"))
    assert "ours margin, Gumbel 0.5 |" in header and "ours top prob. |" in header
    assert "ours margin, argmax values |" in header and "ours vanilla, argmax values |" in header
    assert "task.n_latent=25" in text and "task.n_obs=275" in text
    assert "--strategies margin --steps 50 --opt noise=gumbel --opt noise_scale=0.5 --opt value=sample" in text
    # the training-budget sweep: the checkpoint kept at step 1 (smoke's train.keep_steps), then the model (step 2)
    lines = text.splitlines()
    head = lines.index("## Training budget: the same run's checkpoints")
    sweep = [numbers(x) for x in lines[head:] if x.startswith("| (25, 275)")]
    assert [r[1] for r in sweep] == ["1", "2"]
    assert numbers(row)[3:7] == sweep[1][4:8]  # the model's own numbers
    assert float(sweep[0][8]) == pytest.approx(float(sweep[0][5]) - float(sweep[0][4]), abs=0.011)
    assert (tmp_path / "results" / "table1-budget.png").stat().st_size > 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["models"]["lo_25_275@1"]["budget_of"] == "lo_25_275" and data["models"]["lo_25_275@1"]["step"] == 1
    assert "| MDM (N, P) = (25, 275) |" in text and text.count("| MDM (N, P)") == 1  # checkpoints not listed as models


def test_plan_and_argument_errors(tmp_path):
    with pytest.raises(InputError, match="table"):
        build_plan(4, "cpu")
    with pytest.raises(InputError, match="scale"):
        build_plan(2, "huge")
    assert parse_pairs("25:275,100:200") == [(25, 275), (100, 200)]
    with pytest.raises(InputError, match="N:P"):
        parse_pairs("25-275")
    plan = build_plan(2, "paper")
    assert [Path(m.config).name for m in plan.models] == ["sudoku-paper.toml", "sudoku-arm-paper.toml",
                                                           "sudoku-arm-paper.toml"]
    assert all(Path(m.config).is_file() for t in (1, 2, 3, 5) for s in ("cpu", "paper")
               for m in build_plan(t, s).models)
    # the thin script: one-line errors
    spec = importlib.util.spec_from_file_location("reproduce_tool", ROOT / "tools" / "reproduce.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--table", "1", "--scale", "smoke", "--pairs", "oops", "--results", str(tmp_path)]) == 2


def test_table1_generates_with_sampled_values():
    """L&O-NAE-SAT is generation from all-mask: the paper's rows sample values (argmax rows are named so); the
    puzzle tables decode argmax values."""
    from unmask.core.reproduce import BUDGET_METHODS, build_plan

    t1 = build_plan(1, "cpu")
    assert t1.rows and all(r.options.get("value") == ("argmax" if "argmax" in r.method else "sample") for r in t1.rows)
    assert [r.options["value"] for r in t1.rows if r.paper is not None] == ["sample", "sample"]
    assert set(BUDGET_METHODS) <= {r.method for r in t1.rows}
    t2 = build_plan(2, "cpu").rows
    assert all("value" not in r.options for r in t2)
    paper_rows = [r for r in t2 if r.paper is not None and r.strategy in ("top_prob", "margin")]
    assert [r.options for r in paper_rows] == [{"noise": "gumbel", "noise_scale": 0.5}] * 2  # the paper's decoding
