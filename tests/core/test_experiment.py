"""Experiments as data (unmask.core.experiment): the paper's tables as files under configs/experiments/, run at smoke
scale, give the structure of the committed results/table<N>.md / .json (sections, row labels, columns, the paper's
numbers, the decodings), not their numbers; a user's own file runs through ``unmask experiment``; a bad file is one
line that says what is wrong."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from unmask.core.cli import main
from unmask.core.errors import ConfigError, InputError
from unmask.core.experiment import build_plan, load_experiment, packaged_experiments, run_experiment

ROOT = Path(__file__).parents[2]
TABLES = ROOT / "configs" / "experiments"
TINY = ["train.steps=2", "train.batch_size=4", "train.data_size=16", "train.val_size=0", "train.warmup_steps=1",
        "train.ckpt_every=2", "train.log_every=1", "train.threads=1", "backbone.d_model=32", "backbone.n_layers=1",
        "backbone.n_heads=2"]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def structure(md: str) -> dict:
    """What a results table is made of: heading (without the scale), sections, every table's header and first
    column, and the eval commands with paths and sizes taken out (checkpoints' left out)."""
    lines = md.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            tables.append((cells(lines[i]), [cells(x) for x in lines[i + 2 : j]]))
            i = j
        else:
            i += 1
    evals = [re.sub(r"--generate \d+", "--generate N", re.sub(r"--model \S+", "--model M", x)) for x in lines
             if x.startswith("unmask eval") and "/checkpoints/" not in x]
    return {"heading": re.sub(r" \(scale: \w+\)$", "", lines[0]),
            "sections": [x for x in lines if x.startswith("## ")], "tables": tables, "evals": evals}


def assert_same_structure(ours: Path, committed: Path, reference_columns: list[int]) -> None:
    a, b = structure(ours.read_text()), structure(committed.read_text())
    assert a["heading"] == b["heading"]
    assert a["sections"] == b["sections"]
    assert len(a["tables"]) == len(b["tables"])
    (head, body), (chead, cbody) = a["tables"][0], b["tables"][0]
    assert head == chead  # the columns
    assert [r[0] for r in body] == [r[0] for r in cbody]  # the row labels
    for col in reference_columns:  # the paper's numbers (and their models' sizes)
        assert [r[col] for r in body] == [r[col] for r in cbody], chead[col]
    for (h, rows), (ch, crows) in zip(a["tables"][1:], b["tables"][1:], strict=True):
        assert h == ch
        if h[0] == "model":  # the models table: the same models, in order
            assert [r[0] for r in rows] == [r[0] for r in crows]
    assert a["evals"] == b["evals"]  # the same decodings, grouped into the same commands
    ja, jb = json.loads(ours.with_suffix(".json").read_text()), json.loads(committed.with_suffix(".json").read_text())
    main_a = [r for r in ja["rows"] if not ja["models"][r["model"]]["budget_of"]]
    main_b = [r for r in jb["rows"] if not jb["models"][r["model"]].get("budget_of")]
    assert [(r["method"], r["group"], r["split"], r["strategy"], r["model"], r["reference"]) for r in main_a] == \
        [(r["method"], r["group"], r["split"], r["strategy"], r["model"], r.get("reference", r.get("paper")))
         for r in main_b]  # tables written before the key was "reference" called it "paper"
    for ra, rb in zip(main_a, main_b, strict=True):  # the same resolved decoding options
        assert {k: ra["options"].get(k) for k in rb["options"]} == rb["options"], ra["method"]
    assert set(jb["rows"][0]) - {"paper"} <= set(ja["rows"][0])
    assert [c["label"] for c in ja["contrasts"]] == [c["label"] for c in jb.get("contrasts", [])]  # the same pairs
    assert [k for k, m in ja["models"].items() if not m["budget_of"]] == \
        [k for k, m in jb["models"].items() if not m.get("budget_of")]
    assert set(next(iter(jb["models"].values()))) <= set(next(iter(ja["models"].values())))


@pytest.fixture(scope="module")
def sudoku_runs(tmp_path_factory):
    """Table 2 at smoke scale (three tiny models trained) and the logs of that run."""
    base = tmp_path_factory.mktemp("sudoku")
    logs: list[str] = []
    sets = [f'task.cache_dir="{base / "cache"}"']
    out = run_experiment(TABLES / "table2.toml", scale="smoke", runs_dir=base / "runs", results_dir=base / "results",
                         overrides=sets, progress=False, log=logs.append)
    return base, sets, out, logs


def test_table2_smoke_has_the_committed_structure(sudoku_runs):
    base, _, out, logs = sudoku_runs
    assert out == base / "results" / "table2.md"
    assert_same_structure(out, ROOT / "results" / "table2.md", reference_columns=[1, 2])
    text = out.read_text()
    assert "**Smoke scale" in text
    assert "unmask train --config configs/sudoku-arm.toml --set train.order=row_major" in text
    rows = structure(text)["tables"][0][1]
    assert all(0.0 <= float(r[3]) <= 100.0 for r in rows)  # ours
    assert (base / "results" / "table2-noise.png").stat().st_size > 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert not any(m["reused"] for m in data["models"].values()) and sum("training" in x for x in logs) == 3
    assert all((base / "runs" / d / "model").is_dir() for d in ("sudoku-default", "sudoku-arm", "sudoku-arm-row_major"))


def test_table5_smoke_reuses_the_table2_models(sudoku_runs):
    base, sets, _, _ = sudoku_runs
    logs: list[str] = []
    out = run_experiment(TABLES / "table5.toml", scale="smoke", runs_dir=base / "runs", results_dir=base / "results",
                         overrides=sets, progress=False, log=logs.append)
    assert sum("reusing" in x for x in logs) == 3 and not any("training" in x for x in logs)
    assert_same_structure(out, ROOT / "results" / "table5.md", reference_columns=[1, 2])
    assert "| ARM w/o ordering | 42M | — |" in out.read_text()  # not in the paper's Table 5


def test_table1_smoke_one_pair_has_the_committed_structure(tmp_path):
    out = run_experiment(TABLES / "table1.toml", scale="smoke", runs_dir=tmp_path / "runs",
                         results_dir=tmp_path / "results", models=["lo_25_275"], progress=False, log=lambda s: None)
    assert_same_structure(out, ROOT / "results" / "table1.md", reference_columns=[1, 2])
    text = out.read_text()
    head, body = structure(text)["tables"][0]
    row = dict(zip(head, body[0], strict=True))
    diff = float(row["ours adaptive (margin)"]) - float(row["ours vanilla"])
    assert float(row["ours adaptive − vanilla"]) == pytest.approx(diff, abs=0.011)
    assert re.fullmatch(r"\d+\.\d / \d+\.\d", row["probe: obs given latents / latents given obs"])
    # the training-budget sweep: the checkpoint kept at step 1 (smoke's train.keep_steps), then the model (step 2)
    bhead, sweep = structure(text)["tables"][1]
    assert [r[1] for r in sweep] == ["1", "2"]
    last = dict(zip(bhead, sweep[1], strict=True))
    assert last["vanilla"] == row["ours vanilla"] and last["margin, argmax values"] == row["ours margin, argmax values"]
    first = dict(zip(bhead, sweep[0], strict=True))
    assert float(first["margin − vanilla (sampled)"]) == pytest.approx(
        float(first["adaptive (margin)"]) - float(first["vanilla"]), abs=0.011)
    assert (tmp_path / "results" / "table1-budget.png").stat().st_size > 0
    assert (tmp_path / "results" / "table1-noise.png").stat().st_size > 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["models"]["lo_25_275@1"]["budget_of"] == "lo_25_275" and data["models"]["lo_25_275@1"]["step"] == 1
    assert "--strategies margin --steps 50 --opt noise=gumbel --opt noise_scale=0.5 --opt value=sample" in text


def test_table3_smoke_has_the_committed_structure(tmp_path):
    out = run_experiment(TABLES / "table3.toml", scale="smoke", runs_dir=tmp_path / "runs",
                         results_dir=tmp_path / "results", overrides=[f'task.cache_dir="{tmp_path / "cache"}"'],
                         progress=False, log=lambda s: None)
    assert_same_structure(out, ROOT / "results" / "table3.md", reference_columns=[1, 2])


def test_table_files_plan_every_scale():
    assert set(packaged_experiments()) >= {"table1", "table2", "table3", "table5"}
    for t in (1, 2, 3, 5):
        spec, file = load_experiment(TABLES / f"table{t}.toml")
        for scale in ("smoke", "cpu", "paper"):
            plan = build_plan(spec, file, scale)
            assert plan.rows and all(m.config.is_file() for m in plan.models)
    spec, file = load_experiment(TABLES / "table2.toml")
    paper = build_plan(spec, file, "paper")
    assert [m.config.name for m in paper.models] == ["sudoku-paper.toml", "sudoku-arm-paper.toml",
                                                     "sudoku-arm-paper.toml"]
    assert build_plan(spec, file, "cpu").models[0].reuse == [file.parent / "../../models/sudoku-default"]
    assert paper.models[0].reuse == [] and paper.data["test"].n == 5000
    noisy = [r for r in paper.rows if r.reference is not None and r.section["name"] in ("top_prob", "margin")]
    assert [r.section for r in noisy] == [{"name": "top_prob", "noise": "gumbel", "noise_scale": 0.5},
                                          {"name": "margin", "noise": "gumbel", "noise_scale": 0.5}]
    # Table 1: generation from all-mask; the paper's two columns sample values, argmax rows are named so
    spec, file = load_experiment(TABLES / "table1.toml")
    t1 = build_plan(spec, file, "paper")
    assert len(t1.models) == 5 and {r.section.get("value") for r in t1.rows} == {"sample", "argmax"}
    assert all(r.section["value"] == ("argmax" if "argmax" in r.label else "sample") for r in t1.rows)
    refs = {(r.model, r.label): r.reference for r in t1.rows if r.reference is not None}
    assert refs[("lo_50_250", "vanilla")] == 67.94 and refs[("lo_100_200", "adaptive (margin)")] == 88.91
    assert len(refs) == 10
    assert [m.key for m in build_plan(spec, file, "cpu").models] == ["lo_25_275"]
    assert build_plan(spec, file, "cpu").models[0].overrides[-1] == "train.steps=1500"


def test_a_users_experiment_runs_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository
    cache = tmp_path / "cache"
    file = tmp_path / "mine.toml"
    file.write_text(f'''
title = "Tiny Sudoku: margin vs vanilla"
default_scale = "smoke"
reference = "hoped"

[scales.smoke]
overrides = {json.dumps([*TINY, f'task.cache_dir="{cache}"'])}

[models.tiny]
config = "sudoku-default"  # a packaged config, by name
label = "tiny MDM"

[datasets.test]
n = 3

[[rows]]
label = "margin"
model = "tiny"
strategy = "margin"
reference = 50.0

[[rows]]
label = "vanilla, argmax values"
model = "tiny"
strategy = {{ name = "vanilla", value = "argmax" }}

[[contrasts]]
a = "margin"
b = "vanilla, argmax values"
''')
    args = ["experiment", str(file), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "out"),
            "--steps", "10", "--seed", "7", "--no-progress"]
    assert main(args) == 0
    md = tmp_path / "out" / "mine.md"
    text = md.read_text()
    head, body = structure(text)["tables"][0]
    assert head[:3] == ["method", "hoped model", "hoped % solved"]
    assert [(r[0], r[2]) for r in body] == [("margin", "50.00"), ("vanilla, argmax values", "—")]
    assert "# Tiny Sudoku: margin vs vanilla (scale: smoke)" in text
    assert "unmask experiment mine.toml --runs" in text  # how it was run (relative to the working directory)
    assert "--generate 3 --split test --seed 7 --strategies margin --steps 10" in text
    assert "--strategies vanilla --steps 10 --opt value=argmax" in text
    data = json.loads(md.with_suffix(".json").read_text())
    assert [r["options"]["steps"] for r in data["rows"]] == [10, 10] and data["n_eval"] == 3 and data["seed"] == 7
    # the paired comparison: the difference of the two rows' scores, inside its interval, in the table and the JSON
    (c,) = data["contrasts"]
    ours = {r["method"]: r["ours"] for r in data["rows"]}
    assert c["n"] == 3 and c["difference"] == pytest.approx(ours["margin"] - ours["vanilla, argmax values"])
    assert c["low"] <= c["difference"] <= c["high"] and c["a_only"] - c["b_only"] == round(c["difference"] * 3 / 100)
    head, body = structure(text)["tables"][1]
    assert head[:3] == ["comparison", "model", "examples"] and body[0][:3] == [
        "margin − vanilla, argmax values", "tiny MDM", "3"]
    assert (tmp_path / "runs" / "sudoku-default" / "model").is_dir()
    capsys.readouterr()
    assert main(args) == 0  # again: the model is reused
    assert "[tiny] reusing" in capsys.readouterr().out


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.toml").write_text('[task]\nname = "sudoku"\n[backbone]\nname = "transformer"\n')
    f = tmp_path / "e.toml"
    f.write_text(text)
    return f


GOOD = '''title = "t"
[models.a]
config = "m.toml"
[[rows]]
label = "margin"
model = "a"
strategy = "margin"
'''


@pytest.mark.parametrize(("text", "error", "message"), [
    (GOOD.replace("config =", "confg ="), ConfigError, r"unknown config key 'models\.a\.confg'; allowed keys here: "
     r"config, group, label, overrides, reuse, scales, suffix"),
    (GOOD.replace('model = "a"', 'model = "b"'), ConfigError, r"rows\[0\] \('margin'\) names model 'b', which is not "
     r"under \[models\] \(a\); add \[models\.b\]"),
    (GOOD.replace('"m.toml"', '"nope.toml"'), ConfigError, r"models\.a\.config = 'nope\.toml' not found \(looked for "
     r"'.*nope\.toml', relative to the experiment file\)"),
    (GOOD + "[[columns]]\ntitle = \"x\"\nrows = [\"margin\"]\n", ConfigError, r"layout = \"groups\" only"),
    (GOOD + 'layout = "groups"\n', ConfigError, r"unknown config key 'rows\[0\]\.layout'; allowed keys here: data, "),
    (GOOD.replace('title = "t"', 'title = "t"\n[scales.x]\nrun = "r"'), ConfigError,
     r"unknown config key 'scales\.x\.run'; allowed keys here: banner, diagnostics, models, notes, overrides, "),
    (GOOD.replace('"m.toml"', '"m.toml"\n[models.a.scales.x]\nconfig = 1'), ConfigError,
     r"bad config value at 'models\.a\.scales\.x\.config'"),
    (GOOD.replace('title = "t"', 'title = "t"\nlayout = "groups"\n[[columns]]\ntitle = "x"\nrows = ["marginn"]'),
     ConfigError, r"columns\[0\] \('x'\) reads row 'marginn', which no \[\[rows\]\] entry is labelled"),
    (GOOD.replace('title = "t"', 'title = "t"\n[models.a.scales.smoke]\n[scales.cpu]'), ConfigError,
     r"models\.a\.scales\.smoke: scale 'smoke' is not under \[scales\] \(cpu\)"),
    (GOOD.replace('title = "t"', 'title = 3'), ConfigError, r"bad config value at 'title'"),
    ("title = \"t\"\n[[rows\n", ConfigError, r"not valid TOML"),
    (GOOD + '[[contrasts]]\na = "margin"\nb = "vanila"\n', ConfigError,
     r"contrasts\[0\] names row 'vanila', which no row is labelled"),
    (GOOD + '[[contrasts]]\na = "margin"\nb = "margin"\n', ConfigError, r"compares row 'margin' with itself"),
    (GOOD.replace('title = "t"', 'title = "t"\n[models.b]\nconfig = "m.toml"') + '[[rows]]\nlabel = "v"\n'
     'model = "b"\nstrategy = "vanilla"\n[[contrasts]]\na = "margin"\nb = "v"\n', ConfigError,
     r"rows 'margin' and 'v' decode no model in common"),
    (GOOD.replace('title = "t"', 'title = "t"\n[datasets.x]\n[datasets.y]').replace('strategy = "margin"',
     'strategy = "margin"\ndata = "x"') + '[[rows]]\nlabel = "v"\nmodel = "a"\nstrategy = "vanilla"\ndata = "y"\n'
     '[[contrasts]]\na = "margin"\nb = "v"\n', ConfigError, r"rows 'margin' and 'v' decode different datasets"),
])
def test_a_bad_experiment_file_is_one_line(tmp_path, text, error, message):
    f = write(tmp_path, text)
    with pytest.raises(error, match=message) as exc:
        load_experiment(f)
    assert str(f) in str(exc.value) and "\n" not in str(exc.value)


def test_errors_come_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = write(tmp_path, GOOD.replace('strategy = "margin"', 'strategy = { name = "margin", nois = 0.5 }'))
    assert main(["experiment", str(f), "--runs", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "nois" in err and "row 'margin'" in err
    f = write(tmp_path, GOOD.replace('strategy = "margin"', 'strategy = "marginn"'))
    assert main(["experiment", str(f), "--runs", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert "marginn" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained
    f = write(tmp_path, GOOD)
    assert main(["experiment", str(f), "--scale", "huge"]) == 2
    assert "--scale huge is not a scale" in capsys.readouterr().err
    assert main(["experiment", str(f), "--models", "zz"]) == 2
    assert "--models: 'zz' is not a model" in capsys.readouterr().err
    (tmp_path / "ro").write_text("a file, not a directory")
    assert main(["experiment", str(f), "--results", str(tmp_path / "ro")]) == 2
    assert "--results" in capsys.readouterr().err
    assert main(["experiment", "no-such-experiment"]) == 2
    assert "packaged: table1" in capsys.readouterr().err
    with pytest.raises(InputError, match="--n 0"):
        build_plan(*load_experiment(f), n=0)


def test_packaged_experiments_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, file = load_experiment("table2")
    assert file == TABLES / "table2.toml" and spec.title == "Table 2: Sudoku"


def test_reproduce_tool_is_a_thin_front(tmp_path, capsys):
    """tools/reproduce.py --table N runs configs/experiments/tableN.toml through unmask experiment; --pairs picks
    Table 1's (N, P) models; a mistake is a one-line error with exit status 2 before any work."""
    spec = importlib.util.spec_from_file_location("reproduce_tool", ROOT / "tools" / "reproduce.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--table", "1", "--scale", "smoke", "--pairs", "10:20", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'lo_10_20' is not a model of" in err and "lo_25_275" in err
    with pytest.raises(SystemExit) as exc:
        tool.main(["--table", "2", "--scale", "smoke", "--pairs", "25:275", "--results", str(tmp_path)])
    assert exc.value.code == 2 and "Table 1 only" in capsys.readouterr().err
    assert tool.main(["--table", "2", "--scale", "nope", "--results", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_experiment_flags_have_help():
    import argparse

    from unmask.core.cli import build_parser

    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sp = subs.choices["experiment"]
    for action in sp._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"unmask experiment {action.option_strings[0]} has no help text"
    text = sp.format_help()
    assert "exit status: 0 done" in text and "(default: 256)" in text and "--models KEY,..." in text


def _two_lrs(tmp_path: Path, cache: Path, suffix_b: str = "", reuse_a: str = "") -> Path:
    """An experiment of two models of one config that differ only in train.lr."""
    file = tmp_path / "lrs.toml"
    file.write_text(f'''
title = "lr"
[models.a]
config = "sudoku-default"
overrides = {json.dumps([*TINY, f'task.cache_dir="{cache}"', "train.lr=1e-5"])}
reuse = {json.dumps([reuse_a] if reuse_a else [])}
[models.b]
config = "sudoku-default"
overrides = {json.dumps([*TINY, f'task.cache_dir="{cache}"', "train.lr=3e-3"])}
suffix = "{suffix_b}"
[datasets.test]
n = 2
[[rows]]
label = "margin"
model = ["a", "b"]
strategy = "margin"
''')
    return file


def test_models_that_train_different_weights_never_share_a_run_directory(tmp_path, monkeypatch, capsys):
    """Two models of one config with other train.lr are refused (one line naming both and the fix) instead of the
    second reusing the first one's weights; with a suffix each gets its own run; a run directory that holds a model
    trained with other settings is refused too, before any training."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    args = ["experiment", "", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "out"), "--no-progress"]
    args[1] = str(_two_lrs(tmp_path, cache))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    assert "models 'a' and 'b' would train in one run directory" in err and "train.lr: 1e-05 vs 0.003" in err
    assert 'suffix = \\"-b\\" in [models.b]' in err or 'suffix = "-b" in [models.b]' in err
    assert not (tmp_path / "runs").exists()  # refused before any training
    args[1] = str(_two_lrs(tmp_path, cache, suffix_b="-b"))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[b] reusing" not in out and out.count("training") >= 2
    data = json.loads((tmp_path / "out" / "lrs.json").read_text())
    assert data["models"]["a"]["path"] != data["models"]["b"]["path"]
    # the run directory of 'a' now holds a lr 1e-5 model: a file whose 'a' trains with 3e-3 is refused
    (tmp_path / "lrs.toml").write_text((tmp_path / "lrs.toml").read_text().replace('"train.lr=1e-5"',
                                                                                    '"train.lr=3e-3"'))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "model 'a' would train in" in err and "which holds another model" in err and "train.lr: 1e-05 vs 0.003" \
        in err and "\n" not in err


def test_a_reuse_candidate_that_does_not_match_says_why(tmp_path, monkeypatch, capsys):
    from unmask.core.experiment import ensure_model, prepare_model

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    file = _two_lrs(tmp_path, cache, suffix_b="-b", reuse_a=str(tmp_path / "nothing-here"))
    spec, f = load_experiment(file)
    plan = build_plan(spec, f)
    logs: list[str] = []
    prep = prepare_model(plan.models[0], runs_root=tmp_path / "runs")
    info = ensure_model(prep, progress=False, log=logs.append)
    assert any("warning: not reusing" in x and "nothing-here" in x and "holds no finished model" in x for x in logs)
    # a finished model with too few samples: named with the numbers
    pm = plan.models[1]
    pm.reuse = [info.path]
    logs.clear()
    prep_b = prepare_model(pm, runs_root=tmp_path / "runs")
    prep_b.resolved.train.steps = 50
    with monkeypatch.context() as m:
        import unmask.core.training.trainer as trainer

        m.setattr(trainer, "train", lambda *a, **k: info.path)
        ensure_model(prep_b, progress=False, log=logs.append)
    assert any(f"warning: not reusing {info.path.relative_to(tmp_path)}: it was trained on 8 samples, the plan "
               "needs 200" in x for x in logs), logs
    # a plan with a FLOPs budget (train.flops) is met by the FLOPs a model was trained on, whatever its steps
    from unmask.core.experiment import _mismatch
    from unmask.core.training import checkpoint as ckpt

    cfg = ckpt.read_config(info.path)
    prep_b.resolved.train.flops = cfg["train_flops"]
    assert _mismatch(cfg, prep_b) is None
    prep_b.resolved.train.flops = 2 * cfg["train_flops"]
    assert "it was trained on " in _mismatch(cfg, prep_b) and "FLOPs, the plan needs" in _mismatch(cfg, prep_b)


def test_model_table_counts_tied_weights_once(tmp_path):
    """A model whose output layer is its embedding (stored once, loaded under both names) has the parameters of one."""
    import torch

    from unmask.core.experiment import _info
    from unmask.core.training import checkpoint as ckpt

    emb = torch.zeros(10, 4)
    out = ckpt.save_model_dir(tmp_path / "m", {"embed.weight": emb, "head.weight": emb, "norm.weight": torch.ones(4)},
                              {"step": 1})
    assert len(ckpt.load_tensors(out / ckpt.MODEL_FILE)) == 3
    assert _info(None, out, {}, True, "", []).params == 44
