"""Models by name wherever a path works, the one-call Python API, labels that carry their options, and solve over a
file of puzzles with the answers kept."""

from __future__ import annotations

import csv
import fnmatch
import json
import re
import textwrap
import tomllib
from pathlib import Path

import pytest
from cli_helpers import one_error, run

ROOT = Path(__file__).parents[2]
MODEL = ROOT / "models" / "sudoku-default"
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
HARD = "4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......"


@pytest.fixture()
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package that ships models through the ``unmask_models`` entry points: one by a function, one by
    a path attribute, one whose function fails, and one whose name collides with the packaged model."""
    site = tmp_path / "site"
    pkg = site / "zoo_pkg"
    pkg.mkdir(parents=True)
    copy = tmp_path / "zoo-model"
    copy.symlink_to(MODEL, target_is_directory=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "paths.py").write_text(textwrap.dedent(f'''
        from pathlib import Path

        MODEL = "{copy}"

        def model_path():
            return Path(MODEL)

        def broken():
            raise RuntimeError("weights not downloaded")
    '''))
    dist = site / "zoo_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[unmask_models]\nzoo = zoo_pkg.paths:model_path\n"
                                           "zoo-attr = zoo_pkg.paths:MODEL\nzoo-broken = zoo_pkg.paths:broken\n"
                                           "sudoku-default = zoo_pkg.paths:model_path\n")
    monkeypatch.syspath_prepend(str(site))
    return copy


# -- 1. models by name ----------------------------------------------------------------------------------------------
def test_find_model_paths_win_names_resolve_and_unknown_names_list_the_known(tmp_path, monkeypatch):
    from unmask.core.errors import CheckpointError
    from unmask.core.resources import default_model, find_model, model_label, model_names

    assert "sudoku-default" in model_names()
    assert find_model("sudoku-default") == MODEL == find_model(None) == default_model()
    monkeypatch.chdir(tmp_path)
    assert find_model("models/sudoku-default") == MODEL  # the repository's path works from anywhere
    (tmp_path / "sudoku-default").mkdir()  # a path that exists wins over the name
    assert find_model("sudoku-default") == Path("sudoku-default")
    assert model_label(None) == "sudoku-default" and model_label("runs/x") == "runs/x"
    with pytest.raises(CheckpointError, match=r"model 'nope' does not exist .*known: .*sudoku-default"):
        find_model("nope")


def test_entry_point_models_work_everywhere_and_list(capsys, shipped, tmp_path):
    from unmask.core.errors import PluginError
    from unmask.core.resources import find_model

    assert find_model("zoo") == shipped and find_model("zoo-attr") == shipped
    with pytest.raises(PluginError, match=r"model 'zoo-broken' \(entry point zoo_pkg.paths:broken .* package "
                                          r"'zoo-pkg'\) failed to load: RuntimeError: weights not downloaded"):
        find_model("zoo-broken")
    code, out, err = run(capsys, "list", "models")
    assert code == 2  # the collision is an error line; the others are listed
    assert re.search(r"sudoku-default +task sudoku, mdm, trained on 3,891,200 examples \(the default model\)  "
                     r"\[unmask\]", out)
    assert re.search(r"sudoku-arm +task sudoku, arm, solver order, trained on 71,552 examples  \[unmask\]", out)
    assert "zoo " in out and "[zoo-pkg]" in out and "entry point zoo_pkg.paths:model_path" in out
    assert "collides with the packaged model" in err and "sudoku-default" in err
    assert find_model("sudoku-default") == MODEL  # the packaged model keeps its name
    code, out, _ = run(capsys, "solve", "--model", "zoo", "--threads", "1", PUZZLE)
    assert code == 0 and "solved;" in out
    one_error(capsys, "eval", "--model", "zoo-broken", "--generate", "2",
              needles=("model 'zoo-broken'", "zoo-pkg", "weights not downloaded"))


def test_names_in_eval_export_curves_and_experiment_reuse(capsys, tmp_path, monkeypatch):
    from unmask.core.experiment import _reuse_path

    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "eval", "--model", "sudoku-default", "--generate", "2", "--steps", "5",
                       "--strategies", "margin", "--threads", "1", "--json", "r.json")
    assert code == 0 and "model sudoku-default;" in out
    assert json.loads(Path("r.json").read_text())["model"] == "sudoku-default"
    # export resolves the name before its output checks: a report onto the model's own config is refused
    one_error(capsys, "export", "--model", "sudoku-default", "--onnx", "x.onnx", "--report",
              str(MODEL / "config.json"), needles=("--report", "would overwrite a file of --model"))
    one_error(capsys, "export", "--model", "nope", "--onnx", "x.onnx", needles=("sudoku-default",))
    code, out, _ = run(capsys, "curves", "sudoku-default", "--out", "c.png")
    assert code == 0 and out.startswith("sudoku-default: ") and Path("c.png").is_file()
    code, out, _ = run(capsys, "curves", "default=sudoku-default", "mine=sudoku-default", "--out", "c2.png")
    assert code == 0 and "default: " in out and "mine: " in out
    exp = tmp_path / "exp" / "e.toml"
    exp.parent.mkdir()
    assert _reuse_path("sudoku-default", exp) == MODEL
    (exp.parent / "sudoku-default").mkdir()  # a directory beside the file wins
    assert _reuse_path("sudoku-default", exp) == exp.parent / "sudoku-default"
    assert _reuse_path("runs/none", exp) == exp.parent / "runs/none"


def test_wheel_ships_what_curves_reads():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = data["package-data"]["unmask.models"]
    models = [d for d in (ROOT / "models").iterdir() if (d / "config.json").is_file()]
    assert MODEL in models and len(models) >= 2
    for d in models:  # every committed model, weights and training record, is in the wheel (experiments reuse them)
        for f in ("config.json", "model.safetensors", "metrics.jsonl"):
            assert any(fnmatch.fnmatch(f"{d.name}/{f}", pat) for pat in shipped), f"{d.name}/{f} not shipped"
    assert data["package-dir"]["unmask"] == "package" and (ROOT / "package" / "__init__.py").is_file()


# -- 2. the Python API ----------------------------------------------------------------------------------------------
def test_load_solve_by_name_with_the_cli_defaults(monkeypatch):
    import unmask
    import unmask.core.cli as cli

    threads = []
    monkeypatch.setattr(cli, "default_threads", lambda command: threads.append(command) or 1)
    model = unmask.load("sudoku-default")
    assert threads == ["api"] and model.runtime == "torch" and model.task.name == "sudoku"
    assert model.name == "sudoku-default" and model.path == MODEL and "sudoku-default" in repr(model)
    one = model.solve(PUZZLE, strategy="margin", steps=50)
    assert isinstance(one, unmask.Solution) and one.solved and one.valid and one.nfe == 50
    assert len(one.answer) == 81 and one.answer.startswith("534678912") and one.tokens.shape == (81,)
    many = model.solve([PUZZLE, HARD], strategy="confidence_threshold:tau=0.99")
    assert [type(s) for s in many] == [unmask.Solution] * 2 and many[0].solved and many[0].nfe < 50
    data = model.task.generate("test", 3, seed=0)
    res = model.solve(data, strategy={"name": "top_prob"}, steps=10, noise="gumbel", noise_scale=0.5, seed=1)
    assert len(res) == 3 and all(s.nfe == 10 for s in res)


def test_api_errors_are_one_line(monkeypatch):
    import unmask
    from unmask.core.errors import CheckpointError, InputError, UnmaskError

    with pytest.raises(CheckpointError, match="known: .*sudoku-default"):
        unmask.load("no-such-model")
    with pytest.raises(InputError, match="runtime 'torch' .* has no option 'bogus'"):
        unmask.load(bogus=1)
    model = unmask.load(threads=1)
    with pytest.raises(InputError, match="input 2: "):
        model.solve([PUZZLE, "123"])
    with pytest.raises(UnmaskError, match="unknown config key 'strategy.fooo'; allowed keys here: "):
        model.solve(PUZZLE, fooo=1)
    with pytest.raises(InputError, match="not text; use .solve"):
        model.generate("hello")
    with pytest.raises(InputError, match="expected a puzzle"):
        model.solve(42)


def test_top_level_package_is_cheap():
    import subprocess
    import sys

    code = "import sys, unmask; print(unmask.__version__, 'torch' in sys.modules, callable(unmask.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out[1:] == ["False", "True"]


# -- 3. labels carry their options ----------------------------------------------------------------------------------
def test_strategy_labels_name_options_that_differ_from_defaults():
    from unmask.core.evaluate import label_file_part, strategy_label, unique_labels
    from unmask.core.strategy import build_strategy

    s = build_strategy({"name": "confidence_threshold", "tau": 0.99, "steps": 50, "noise": "none"})
    assert strategy_label(s) == "confidence_threshold:tau=0.99"  # steps and noise are the defaults
    s = build_strategy({"name": "margin", "steps": 20, "noise": "gumbel", "noise_scale": 0.5})
    assert strategy_label(s) == "margin:steps=20:noise=gumbel:noise_scale=0.5"
    assert strategy_label(s, ["noise_scale", "noise"]) == "margin:noise_scale=0.5:noise=gumbel"  # as typed
    assert unique_labels(["margin", "margin", "top_prob", "margin"]) == ["margin", "margin-2", "top_prob", "margin-3"]
    assert label_file_part("confidence_threshold:tau=0.99") == "confidence_threshold-tau=0.99"
    assert label_file_part("x:path=a/b c") == "x-path=a-b-c"


def test_eval_rows_json_plots_and_heat_maps_tell_options_apart(capsys, tmp_path, monkeypatch):
    from unmask.core import report

    charts = []
    real = report.bar_chart
    monkeypatch.setattr(report, "bar_chart", lambda png, rep, title="": (charts.append(rep), real(png, rep, title)))
    out_json = tmp_path / "r.json"
    code, out, _ = run(capsys, "eval", "--model", str(MODEL), "--generate", "3", "--threads", "1", "--steps", "20",
                       "--strategies", "confidence_threshold:tau=0.999,confidence_threshold:tau=0.99,margin",
                       "--trace", "--json", str(out_json))
    assert code == 0
    labels = ["confidence_threshold:tau=0.999", "confidence_threshold:tau=0.99", "margin"]
    rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith(("confidence_threshold", "margin "))]
    assert rows == labels  # --steps 20 went to every strategy: no row repeats it
    rep = json.loads(out_json.read_text())
    assert [r["strategy"] for r in rep["results"]] == labels
    assert [r["options"].get("tau") for r in rep["results"]] == [0.999, 0.99, None]
    assert [r["strategy"] for r in charts[0]["results"]] == labels
    maps = sorted(p.name for p in tmp_path.glob("r-order-*.png"))
    assert maps == ["r-order-confidence_threshold-tau=0.99.png", "r-order-confidence_threshold-tau=0.999.png",
                    "r-order-margin.png"]


# -- 4. solve over a file or stdin, answers kept ----------------------------------------------------------------------
@pytest.fixture()
def puzzles(tmp_path: Path) -> Path:
    f = tmp_path / "puzzles.txt"
    f.write_text(f"# two famous puzzles\n{PUZZLE}\n{HARD}\n")
    return f


def test_solve_a_file_writes_jsonl_and_csv(capsys, tmp_path, puzzles, monkeypatch):
    out = tmp_path / "answers.jsonl"
    code, stdout, _ = run(capsys, "solve", "--threads", "1", str(puzzles), "--out", str(out))
    assert code in (0, 1) and "of 2 solved" in stdout and str(out) in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [1, 2] and [r["puzzle"] for r in rows] == [PUZZLE, HARD]
    assert rows[0]["solved"] and rows[0]["answer"].startswith("534678912") and rows[0]["nfe"] == 50
    assert set(rows[1]) == {"index", "puzzle", "answer", "solved", "valid", "nfe"}
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(puzzles.read_text()))
    csv_out = tmp_path / "answers.csv"
    code, _, _ = run(capsys, "solve", "--threads", "1", "--strategy", "confidence_threshold:tau=0.99", "-",
                     "--out", str(csv_out))
    table = list(csv.DictReader(csv_out.open()))
    assert [r["puzzle"] for r in table] == [PUZZLE, HARD] and table[0]["solved"] == "true"
    assert int(table[0]["nfe"]) < 50
    code, stdout, _ = run(capsys, "solve", "--threads", "1", "--steps", "5", str(puzzles))  # no --out: printed
    assert "--- 1: " in stdout and "--- 2: " in stdout and "of 2 solved" in stdout


def test_solve_many_refuses_what_it_cannot_do(capsys, tmp_path, puzzles, monkeypatch):
    one_error(capsys, "solve", str(puzzles), "--out", str(tmp_path / "a.json"), needles=(".jsonl", ".csv"))
    one_error(capsys, "solve", "--threads", "1", str(puzzles), "--show-order",
              needles=("holds 2", "--show-order"))
    as_csv = puzzles.with_suffix(".csv")
    as_csv.write_text(puzzles.read_text())
    before = as_csv.read_text()
    one_error(capsys, "solve", str(as_csv), "--out", str(as_csv), needles=("is the puzzle file", "an input"))
    assert as_csv.read_text() == before
    as_csv.unlink()
    one_error(capsys, "solve", "puzles.txt", needles=("'puzles.txt' is no file",))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("12\n34\n"))
    one_error(capsys, "solve", "-", needles=("stdin is neither one puzzle", "nor a file of puzzles (stdin, line 1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["puzzles.txt"]  # nothing written


def test_eval_data_examples_carry_the_decoded_answer(capsys, tmp_path, puzzles):
    out = tmp_path / "r.json"
    code, _, _ = run(capsys, "eval", "--model", "sudoku-default", "--data", str(puzzles), "--threads", "1",
                     "--strategies", "margin", "--json", str(out))
    assert code == 0
    ex = json.loads(out.read_text())["results"][0]["examples"]
    assert len(ex) == 2 and ex[0]["solved"] and ex[0]["answer"].startswith("534678912")
    assert all(len(e["answer"]) == 81 and set(e) == {"solved", "nfe", "answer"} for e in ex)
