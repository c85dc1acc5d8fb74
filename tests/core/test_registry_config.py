"""Registries (entry points, collisions, broken plugins) and typed configs (unknown keys, types, ranges)."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from unmask.core.config import apply_overrides, convert, load_toml, parse_value, resolve_plugin
from unmask.core.errors import ConfigError, PluginError
from unmask.core.registry import PluginWarning, Registry, strategies, tasks
from unmask.core.strategy import StrategyOptions, build_strategy


def test_core_import_is_cheap():
    import subprocess

    code = "import sys, unmask.core; print('torch' in sys.modules, 'unmask.plugins.strategies.margin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_builtins_listed_with_descriptions_and_package():
    infos = {i.name: i for i in strategies.info()}
    for name in ("vanilla", "top_prob", "margin"):
        assert name in infos and infos[name].package == "unmask" and infos[name].description


def test_unknown_name_lists_available():
    with pytest.raises(PluginError) as e:
        strategies.get("marginn")
    msg = str(e.value)
    assert "unknown strategy 'marginn'" in msg and "margin" in msg and "vanilla" in msg and "\n" not in msg


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """A real installed distribution (dist-info on sys.path) with good, colliding and broken entry points."""
    site = tmp_path / "site"
    (site / "thirdparty_pkg").mkdir(parents=True)
    (site / "thirdparty_pkg" / "__init__.py").write_text("")
    (site / "thirdparty_pkg" / "strat.py").write_text(textwrap.dedent('''
        from unmask.core.strategy import ScoreStrategy

        class Good(ScoreStrategy):
            """A good third-party strategy."""
            def score(self, probs, x):
                return probs.amax(-1)

        class Clash(Good):
            """Tries to shadow margin."""
    '''))
    dist = site / "thirdparty_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [unmask_strategies]
        good_one = thirdparty_pkg.strat:Good
        margin = thirdparty_pkg.strat:Clash
        broken = thirdparty_pkg.missing_module:Nope
    """))
    monkeypatch.syspath_prepend(str(site))
    reg = Registry("strategies", "strategy")
    yield reg


def test_third_party_plugin_found(fake_dist):
    assert "good_one" in fake_dist.names()
    cls = fake_dist.get("good_one")
    assert cls.__name__ == "Good"
    infos = {i.name: i for i in fake_dist.info()} if False else None  # info() would warn about 'broken'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        infos = {i.name: i for i in fake_dist.info()}
    assert infos["good_one"].package == "thirdparty-pkg"
    assert infos["good_one"].description == "A good third-party strategy."


def test_collision_with_builtin_names_both_packages(fake_dist):
    with pytest.raises(PluginError) as e:
        fake_dist.get("margin")
    msg = str(e.value)
    assert "thirdparty-pkg" in msg and "'unmask'" in msg and "collides" in msg
    assert any("collides" in c for c in fake_dist.collisions())


def test_broken_plugin_warns_and_others_work(fake_dist):
    with pytest.warns(PluginWarning, match=r"entry point thirdparty_pkg\.missing_module:Nope.*thirdparty-pkg"):
        infos = fake_dist.info()
    names = {i.name for i in infos}
    assert {"good_one", "vanilla", "top_prob"} <= names and "broken" not in names
    with pytest.raises(PluginError, match="failed to load"):
        fake_dist.get("broken")
    assert fake_dist.get("top_prob").__name__ == "TopProb"


# -- configs --------------------------------------------------------------------------------------------------------
def test_unknown_key_names_path_and_allowed():
    with pytest.raises(ConfigError) as e:
        convert({"steps": 5, "stpes": 3}, StrategyOptions, "strategy margin")
    msg = str(e.value)
    assert "unknown config key 'strategy margin.stpes'" in msg and "steps" in msg


def test_wrong_type_and_range_name_path():
    with pytest.raises(ConfigError, match=r"at 'strategy.steps'.*expected `int`, got `str`"):
        convert({"steps": "many"}, StrategyOptions, "strategy")
    with pytest.raises(ConfigError, match=r"at 'strategy.steps'.*>= 1"):
        convert({"steps": 0}, StrategyOptions, "strategy")
    with pytest.raises(ConfigError, match=r"at 'strategy.noise'.*gumbel"):
        convert({"noise": "pink"}, StrategyOptions, "strategy")


def test_plugin_options_decoded_after_lookup():
    name, cls, opts = resolve_plugin(strategies, {"name": "margin", "steps": 7, "noise": "gumbel"}, "strategy")
    assert name == "margin" and opts.steps == 7 and opts.noise == "gumbel"
    with pytest.raises(ConfigError, match=r"at 'strategy.name': unknown strategy 'nope'; available: .*margin"):
        resolve_plugin(strategies, {"name": "nope"}, "strategy")
    with pytest.raises(ConfigError, match="needs a 'name' key"):
        resolve_plugin(tasks, {"min_clues": 20}, "task")


def test_overrides_parse_toml_values():
    raw = apply_overrides({"train": {"lr": 1e-3}}, ["train.lr=3e-4", "train.val_strategies=['margin']", "out=runs/x",
                                                     "task.name=sudoku", "train.bf16=true"])
    assert raw == {"train": {"lr": 3e-4, "val_strategies": ["margin"], "bf16": True}, "out": "runs/x",
                   "task": {"name": "sudoku"}}
    assert parse_value("12") == 12 and parse_value("hello") == "hello"
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"out": "x"}, ["out.sub=1"])


def test_run_config_errors(tmp_path):
    from unmask.core.training.trainer import resolve_config

    good = load_toml(Path(__file__).parents[2] / "configs" / "sudoku-default.toml")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'"):
        resolve_config(None, ["train.lrr=1"], raw=good)
    with pytest.raises(ConfigError, match=r"bad config value at 'backbone.n_layers'"):
        from unmask.core.models import build_model

        r = resolve_config(None, ["backbone.n_layers=0"], raw=good)
        build_model(r.task, r.raw["backbone"])
    with pytest.raises(ConfigError, match=r"at 'train.val_strategies\[0\].name': unknown strategy 'bogus'"):
        resolve_config(None, ["train.val_strategies=['bogus']"], raw=good)
    # a validation strategy may carry options; bad ones are named with their path
    r = resolve_config(None, ["train.val_strategies=[{name='margin', value='sample'}, 'vanilla']"], raw=good)
    assert r.train.val_strategies[0] == {"name": "margin", "value": "sample"}
    with pytest.raises(ConfigError, match=r"train.val_strategies\[1\].value"):
        resolve_config(None, ["train.val_strategies=['margin', {name='top_prob', value='nope'}]"], raw=good)
    with pytest.raises(ConfigError, match=r"task.min_clues \(40\) must be <= task.max_clues \(30\)"):
        resolve_config(None, ["task.min_clues=40", "task.max_clues=30"], raw=good)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")


def test_build_strategy_rejects_non_strategies():
    with pytest.raises(ConfigError, match="unknown config key"):
        build_strategy({"name": "margin", "tau": 0.9})
