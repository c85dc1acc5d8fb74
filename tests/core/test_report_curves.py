"""Training curves: reading metrics.jsonl (resumed runs, damaged lines) and ``unmask curves`` over several runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from unmask.core.errors import InputError
from unmask.core.report import read_metrics, training_curves
from unmask.core.training.trainer import plot_metrics

from .test_cli import assert_one_line_error, unmask


def write_run(d: Path, recs: list[dict]) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def run_records(scale: float = 1.0) -> list[dict]:
    recs: list[dict] = [{"event": "start", "params": 10}]
    for step in (50, 100, 150, 200):
        recs.append({"step": step, "loss": 1.0 / step, "samples": 8 * step, "train_seconds": scale * step})
    recs.append({"step": 200, "samples": 1600, "val_margin": 0.4, "val_margin_cells": 0.7, "val_vanilla": 0.1})
    # resumed from the step-100 checkpoint: steps 150 and 200 are logged again and the later records win
    recs.append({"event": "start", "params": 10})
    recs.append({"step": 150, "loss": 0.5, "samples": 1200, "train_seconds": scale * 160})
    recs.append({"step": 200, "loss": 0.25, "samples": 1600, "train_seconds": scale * 210})
    recs.append({"step": 200, "samples": 1600, "val_margin": 0.5, "val_vanilla": 0.2})
    recs.append({"step": 125, "samples": 1000, "val_margin": 0.3, "val_margin_cells": 0.6})
    return recs


def test_read_metrics_keeps_the_last_record_per_step_and_times_validation(tmp_path):
    run = write_run(tmp_path / "run", run_records())
    tr, va = read_metrics(run)
    assert [r["step"] for r in tr] == [50, 100, 150, 200]
    assert [r["loss"] for r in tr[2:]] == [0.5, 0.25]
    assert [r["step"] for r in va] == [125, 200]
    assert va[1]["val_margin"] == 0.5 and va[1]["train_seconds"] == 210
    assert va[0]["train_seconds"] == pytest.approx(130)  # between steps 100 (100 s) and 150 (160 s)
    assert read_metrics(run / "metrics.jsonl") == (tr, va)


def test_damaged_metrics_are_one_line_errors_and_never_stop_training(tmp_path):
    run = write_run(tmp_path / "run", run_records())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 250, "loss": 0.2\n')  # a write cut short by a crash
    with pytest.raises(InputError, match=r"metrics.jsonl:12: not a JSON record"):
        read_metrics(run)
    with pytest.raises(InputError, match="no metrics.jsonl there"):
        read_metrics(tmp_path / "missing")
    with pytest.raises(InputError, match="x axis 'time' is unknown"):
        training_curves(tmp_path / "c.png", {"": run}, x="time")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_metrics(run / "metrics.jsonl", tmp_path / "c.png")
    assert any("training curves not drawn" in str(w.message) for w in caught)


def test_curves_command_overlays_runs(tmp_path):
    a = write_run(tmp_path / "plain", run_records())
    b = write_run(tmp_path / "relation" / "model", run_records(scale=2.0))
    png = tmp_path / "ab.png"
    p = unmask("curves", str(a), f"rel={b}", "--out", str(png), "--x", "seconds")
    assert p.returncode == 0, p.stderr
    assert png.stat().st_size > 10_000
    lines = p.stdout.splitlines()
    assert lines[0] == "plain: 200 steps, 1600 samples, 3.5 min of training"
    assert "rel: 200 steps, 1600 samples, 7.0 min of training" in lines
    assert any("margin 50.0  vanilla 20.0" in x for x in lines)  # the resumed run's record at step 200
    assert any("margin 30.0 (cells 60.0)" in x for x in lines) and not any("cells 70.0" in x for x in lines)
    p = unmask("curves", str(b), "--out", str(png))  # one run: labelled by its run directory, drawn unlabelled
    assert p.returncode == 0 and p.stdout.startswith(f"{b}: 200 steps"), p.stdout + p.stderr
    assert_one_line_error(unmask("curves", str(a), str(a), "--out", str(png)), "two runs are labelled 'plain'")
    assert_one_line_error(unmask("curves", f"x={tmp_path / 'nope'}", "--out", str(png)), "no metrics.jsonl there")
    (tmp_path / "file").write_text("")
    assert_one_line_error(unmask("curves", str(a), "--out", str(tmp_path / "file" / "c.png")), "cannot write")


def test_cpu_model_names_native_bf16(monkeypatch):
    """Benchmark reports name the CPU's native bf16 (AMX before AVX512-BF16, else none); train.bf16 = "auto" follows
    the same check."""
    import torch

    from unmask.core.report import cpu_bf16, cpu_model

    for amx, avx, label in ((True, True, "AMX"), (False, True, "AVX512-BF16"), (False, False, "")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        assert cpu_bf16() == label
        assert cpu_model().endswith(f"({label or 'no native bf16'})")


def test_curves_add_a_cells_panel_when_runs_logged_cells(tmp_path, monkeypatch):
    import unmask.core.report as report

    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, png: figs.append(
        [(ax.get_ylabel(), [list(line.get_ydata()) for line in ax.get_lines()]) for ax in fig.axes]))
    with_cells = write_run(tmp_path / "a", run_records())
    training_curves(tmp_path / "a.png", {"": with_cells})
    (loss, _), (solved, s_lines), (cells, c_lines) = figs[-1]
    assert (solved, cells) == ("% solved (validation)", "% of cells right (validation)")
    assert s_lines == [[30.0, 50.0], [20.0]]  # margin at steps 125 and 200 (the later record wins), vanilla
    assert c_lines == [[60.0]]  # margin's cells: only the step-125 record logged them
    plain = write_run(tmp_path / "b", [r for r in run_records() if not any(k.endswith("_cells") for k in r)])
    training_curves(tmp_path / "b.png", {"": plain})
    assert [y for y, _ in figs[-1]] == ["training loss (per token)", "% solved (validation)"]
