"""The CLI a user expects: per-strategy options, warnings for options that do nothing, help with defaults, solve
explains a failure, thread defaults, --resume says where it resumes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from unmask.core.cli import build_parser, default_threads, main, strategy_specs

ROOT = Path(__file__).parents[2]
MODEL = ROOT / "models" / "sudoku-default"
CONFIG = ROOT / "configs" / "sudoku-default.toml"
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


@pytest.mark.parametrize("text, want", [
    ("margin", [("margin", [])]),
    ("margin,confidence_threshold:tau=0.99,factor:f=0.1",
     [("margin", []), ("confidence_threshold", ["tau=0.99"]), ("factor", ["f=0.1"])]),
    ("factor:f=0.1:score=margin,vanilla", [("factor", ["f=0.1", "score=margin"]), ("vanilla", [])]),
    ("factor:f=0.1,score=margin", [("factor", ["f=0.1", "score=margin"])]),
])
def test_strategy_specs(text, want):
    assert strategy_specs(text) == want


@pytest.mark.parametrize("text, msg", [("tau=0.9,margin", "comes before any strategy name"),
                                       ("margin:tau", "'tau' is not KEY=VALUE")])
def test_bad_strategy_specs(text, msg):
    from unmask.core.errors import InputError

    with pytest.raises(InputError, match=msg):
        strategy_specs(text)


def test_eval_per_strategy_options_and_per_example_json(capsys, tmp_path):
    data = tmp_path / "p.txt"
    data.write_text(PUZZLE + "\n" + PUZZLE + "\n")
    out = tmp_path / "r.json"
    code = main(["eval", "--model", str(MODEL), "--data", str(data), "--steps", "20", "--json", str(out),
                 "--strategies", "margin,confidence_threshold:tau=0.99:steps=10", "--opt", "value=sample",
                 "--opt", "temperature=0.5"])
    _, err = capsys.readouterr()
    assert code == 0, err
    res = {r["strategy"]: r for r in json.loads(out.read_text())["results"]}
    assert res["margin"]["options"]["steps"] == 20 and res["margin"]["options"]["value"] == "sample"
    ct = res["confidence_threshold:tau=0.99:steps=10"]["options"]  # the label carries the row's own options
    assert ct["tau"] == 0.99 and ct["steps"] == 10 and ct["temperature"] == 0.5  # own option beats --steps
    for r in res.values():  # --data: how each example went, in file order
        assert len(r["examples"]) == 2 and all(set(e) == {"solved", "nfe", "answer"} for e in r["examples"])
        assert all(1 <= e["nfe"] <= 20 for e in r["examples"])


def test_options_without_effect_are_warned(capsys):
    from unmask.core.cli import _decoders
    from unmask.core.engine import FunctionEngine
    from unmask.core.task import build_task

    task = build_task({"name": "sudoku", "cache_dir": ""})
    engine = FunctionEngine(lambda t: t, 10, 81, config={"train": {"objective": "mdm"}})

    def _strategies(names, steps, opts):
        return _decoders(engine, task, names, steps, opts)

    with pytest.warns(UserWarning) as rec:
        _strategies("margin,vanilla", None, ["noise=gumbel", "temperature=2"])
    msgs = [str(w.message) for w in rec]
    assert "strategy margin: noise=gumbel has no effect with noise_scale=0; set noise_scale > 0 (e.g. 0.5)" in msgs
    assert any(m.startswith("strategy margin: temperature=2 has no effect with value=argmax") for m in msgs)
    assert any(m.startswith("strategy vanilla: noise=gumbel has no effect on vanilla") for m in msgs)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # options that all matter: no warning
        _strategies("margin", None, ["noise=gumbel", "noise_scale=0.5"])


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("list", "train", "curves", "eval", "solve", "export"):
        sp = subs.choices[name]
        for action in sp._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"unmask {name} {action.option_strings[0]} has no help text"
        text = sp.format_help()
        assert "exit status: 0 done" in text
    assert "(default: 256)" in subs.choices["eval"].format_help()  # --batch-size
    assert "(default: margin)" in subs.choices["solve"].format_help()


def test_explain_shows_where_the_grid_breaks():
    from unmask.core.task import build_task

    task = build_task({"name": "sudoku"})
    data = task.parse(PUZZLE)
    tokens = np.asarray(data.targets[0]).copy()
    assert task.explain(tokens, data) == []  # the solution: nothing to say
    # put a 3 at r1c3 (the solution has 4 there): row 1, column 3 and box 1 now hold two 3s
    assert int(tokens[2]) == 4 - 1 and int(tokens[1]) == 3 - 1  # digits are stored as token = digit - 1
    tokens[2] = 3 - 1
    lines = task.explain(tokens, data)
    assert "row 1 has a 3 twice: r1c2 (given), r1c3" in lines
    assert "box 1 has a 3 twice: r1c2 (given), r1c3" in lines
    assert lines[lines.index("grid ([given], !clash!):") + 1].startswith("[5]!3!!3!")


def test_default_threads(monkeypatch):
    import os

    assert default_threads("solve") == 1
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 1.0, 0.0, 0.0))
    assert default_threads("eval") == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads("eval") == cores


def test_resume_says_which_step(capsys, tmp_path):
    sets = [f'out="{tmp_path / "run"}"', "train.steps=2", "train.batch_size=8", "train.data_size=100",
            "train.val_size=0", "train.ckpt_every=1", f'task.cache_dir="{tmp_path / "cache"}"', "backbone.d_model=32",
            "backbone.n_layers=1", "backbone.n_heads=2"]
    args = ["train", "--config", str(CONFIG), "--no-progress", *[x for s in sets for x in ("--set", s)]]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--set", "train.steps=3", "--resume"]) == 0
    out, _ = capsys.readouterr()
    assert "resuming from step 2 (" in out and "step-0000002" in out


def test_heat_maps_share_one_scale_and_the_board_shows_digits(capsys, tmp_path, monkeypatch):
    import unmask.core.report as report

    calls = []
    real = report.order_heatmap

    def spy(png, order, given, shape, title, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append((Path(png).name, float(order.max()), kw))
        real(png, order, given, shape, title, **kw)

    monkeypatch.setattr(report, "order_heatmap", spy)
    data = tmp_path / "p.txt"
    data.write_text(PUZZLE + "\n")
    assert main(["eval", "--model", str(MODEL), "--data", str(data), "--strategies", "margin,top_prob:steps=10",
                 "--steps", "30", "--trace", "--json", str(tmp_path / "r.json")]) == 0
    assert [c[0] for c in calls] == ["r-order-margin.png", "r-order-top_prob-steps=10.png"]  # labels carry options
    assert calls[0][2]["vmax"] == calls[1][2]["vmax"] == max(c[1] for c in calls) == 30.0
    assert all((tmp_path / c[0]).is_file() for c in calls)
    calls.clear()
    code = main(["solve", "--model", str(MODEL), "--order-png", str(tmp_path / "o.png"), PUZZLE])
    assert code == 0 and (tmp_path / "o.png").is_file()
    labels = calls[0][2]["labels"]
    assert len(labels) == 81 and labels[:2] == ["5", "3"] and all(x in "123456789" for x in labels)


@pytest.mark.parametrize("flags,want", [
    (["--opt", "foo=1"], "--opt foo=...: strategy 'margin' has no option 'foo'; its options: "),
    (["--strategies", "margin:fooo=1"], "--strategies margin:fooo=...: strategy 'margin' has no option 'fooo'"),
])
def test_unknown_strategy_option_names_the_flag(capsys, flags, want):
    argv = ["eval", "--generate", "2", "--threads", "1", *(["--strategies", "margin"] if "--opt" in flags else []),
            *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + want) and "steps" in err[0]
