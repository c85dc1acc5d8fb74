"""Verified retries: rows whose answer breaks the task's rules are decoded again with noise; the check never reads
the reference answer, valid rows are never touched, and every attempt's forward passes are counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_error, run

from unmask.core.decoding.runtime import open_engine
from unmask.core.errors import InputError
from unmask.core.evaluate import evaluate, evaluate_with, noised
from unmask.core.strategy import build_strategy
from unmask.core.task import build_task

MODEL = Path(__file__).parents[2] / "models" / "sudoku-default"


@pytest.fixture(scope="module")
def setup():
    engine = open_engine(MODEL, "torch")
    task = build_task({**engine.config["task"], "cache_dir": ""})
    return engine, task, task.generate("hard", 24, 11)


def test_retries_redecode_only_invalid_rows_without_reading_the_answer(setup, monkeypatch):
    engine, task, data = setup
    strategy = build_strategy({"name": "top_prob", "steps": 20})  # few steps: some rows break the rules
    base = evaluate(engine, task, data, strategy, seed=0)
    checks: list[bool] = []
    score = type(task).score

    def spy(self, pred, d):
        checks.append(d.targets is None)
        return score(self, pred, d)

    monkeypatch.setattr(type(task), "score", spy)
    res = evaluate(engine, task, data, strategy, seed=0, retries=3)
    assert checks[:-1] and all(checks[:-1]) and checks[-1] is False  # rule checks blind; the final score has answers
    monkeypatch.undo()
    invalid = task.score(base.predictions, data)["invalid"]
    assert invalid.any(), "the fixture should leave some rows invalid"
    attempts = res.per_example["attempts"]
    assert (attempts[~invalid] == 1).all() and (attempts[invalid] >= 2).all() and attempts.max() <= 4
    assert np.array_equal(res.predictions[~invalid], base.predictions[~invalid])  # valid rows untouched
    assert np.array_equal(res.per_example["nfe"][~invalid], base.per_example["nfe"][~invalid])
    assert (res.per_example["nfe"][invalid] > base.per_example["nfe"][invalid]).all()
    still = task.score(res.predictions, data)["invalid"]
    assert (attempts[still] == 4).all()  # a row stops retrying only when valid or out of attempts
    assert np.array_equal(res.predictions[still], base.predictions[still])  # and then keeps its first answer
    assert res.solved >= base.solved and res.options["retries"] == 3


def test_retry_noise_goes_on_the_scores_and_a_strategy_without_noise_options_is_kept():
    s = noised(build_strategy({"name": "margin", "steps": 10}), 0.1)
    assert s.config_dict()["noise"] == "gumbel" and s.config_dict()["noise_scale"] == 0.1
    plain = build_strategy({"name": "margin", "steps": 10})
    assert noised(plain, 0.0) is plain


def test_retries_need_a_task_that_reports_invalid_answers(setup, monkeypatch):
    engine, task, data = setup
    score = type(task).score
    monkeypatch.setattr(type(task), "score", lambda self, p, d: {k: v for k, v in score(self, p, d).items()
                                                                if k != "invalid"})
    decoded: list[int] = []
    monkeypatch.setattr("unmask.core.evaluate._decode_all", lambda *a, **k: decoded.append(1))
    with pytest.raises(InputError, match="reports 'invalid'"):
        evaluate(engine, task, data.take(slice(0, 2)), build_strategy("margin"), retries=1)
    assert not decoded  # refused before any decoding


def test_retries_refused_for_a_decoder_that_decodes_by_itself(setup):
    engine, task, data = setup

    class Own:
        name = "arm"

        def evaluate(self, *a, **k):
            raise AssertionError("not reached")

    with pytest.raises(InputError, match="decodes by itself"):
        evaluate_with(engine, task, data, Own(), retries=2)


@pytest.mark.parametrize(("args", "needle"), [(("--retries", "-1"), "--retries"), (("--retries", "two"), "--retries"),
                                              (("--retry-noise", "x"), "--retry-noise"),
                                              (("--retry-noise", "-0.5"), "--retry-noise")])
def test_cli_retry_options_are_checked(capsys, args, needle):
    one_error(capsys, "eval", "--model", str(MODEL), "--generate", "2", *args, needles=(needle,))


def test_cli_retries_label_the_row_and_count_in_the_json(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run(capsys, "eval", "--model", str(MODEL), "--generate", "4", "--split", "hard", "--strategies",
                          "top_prob:steps=20", "--retries", "2", "--json", str(out), "--no-progress")
    assert code == 0 and "+2 retries" in stdout
    import json

    result = json.loads(out.read_text())["results"][0]
    assert result["options"]["retries"] == 2 and result["options"]["retry_noise"] == 0.1


def _first_invalid(engine, task, data, strategy):
    base = evaluate(engine, task, data, strategy, seed=0)
    bad = np.flatnonzero(task.score(base.predictions, data)["invalid"])
    assert len(bad), "the fixture should leave some rows invalid"
    return int(bad[0]), base


def test_solve_retries_an_answer_that_breaks_the_rules_and_shows_the_kept_order(setup, capsys):
    engine, task, data = setup
    i, _ = _first_invalid(engine, task, data, build_strategy({"name": "top_prob", "steps": 10}))
    puzzle = "".join(c for c in task.format(data.inputs[i]) if c in "0123456789.")
    assert len(puzzle) == 81
    code, out, _ = run(capsys, "solve", "--model", str(MODEL), "--strategy", "top_prob:steps=10", puzzle,
                       "--show-order")
    assert code == 1 and "NOT solved (invalid grid)" in out and "decodes" not in out
    code, out, _ = run(capsys, "solve", "--model", str(MODEL), "--strategy", "top_prob:steps=10", puzzle,
                       "--retries", "8", "--show-order")
    assert " decodes;" in out and "order (forward pass" in out
    assert code == 0 or "NOT solved" in out  # 8 retries mostly find a valid grid; the output says which it is


def test_api_solve_takes_retries(setup):
    import unmask

    engine, task, data = setup
    model = unmask.load(str(MODEL))
    part = data.take(slice(0, 12))
    once = model.solve(part, "top_prob", steps=10)
    again = model.solve(part, "top_prob", steps=10, retries=4)
    assert sum(s.valid for s in again) >= sum(s.valid for s in once)
    assert all(a.nfe >= o.nfe for a, o in zip(again, once, strict=True))
    assert any(a.nfe > o.nfe for a, o in zip(again, once, strict=True))  # some row was decoded again
    with pytest.raises(InputError, match="retries"):
        model.solve(part, "top_prob", retries=-1)
