"""Cases a fuzz campaign of the command line found: outputs onto inputs, unbounded sizes, tracebacks, typos found
after training, nonsense accepted, temporary files left by SIGKILL, plugin errors naming the wrong plugin, and the
small things around them (help time, progress bars, file permissions). Every mistake ends in one ``error:`` line and
exit status 2, before any work, with nothing already written lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import one_error, run

from unmask.core.errors import ConfigError, InputError

ROOT = Path(__file__).parents[2]
MODEL = ROOT / "models" / "sudoku-default"
CONFIG = ROOT / "configs" / "sudoku-default.toml"
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
HUGE = str(10**12)  # examples: petabytes, on any machine
TINY = ["train.steps=2", "train.batch_size=4", "train.data_size=16", "train.val_size=0", "train.warmup_steps=1",
        "train.ckpt_every=2", "train.log_every=1", "train.threads=1", "backbone.d_model=32", "backbone.n_layers=1",
        "backbone.n_heads=2"]


def digest(*paths: Path) -> dict[str, str]:
    out = {}
    for p in paths:
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "mc"
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "curves.png"):
        shutil.copy(MODEL / name, dst / name)
    return dst


# -- 1. an output onto an input, or two outputs on one path ---------------------------------------------------------
def test_eval_outputs_onto_its_inputs_are_refused_before_any_work(capsys, tmp_path, model_copy):
    data = tmp_path / "puzzles.txt"
    data.write_text(PUZZLE + "\n")
    before = digest(model_copy, data)
    ev = ("eval", "--model", str(model_copy), "--strategies", "margin")
    one_error(capsys, *ev, "--generate", "2", "--json", str(model_copy / "config.json"),
              needles=("--json", "would overwrite a file of --model"))
    one_error(capsys, *ev, "--data", str(data), "--json", str(data), needles=("is --data",))
    one_error(capsys, *ev, "--generate", "2", "--json", str(tmp_path / "r.png"),
              needles=("--json (its bar chart) would be written to", "where --json goes", "change the path of --json"))
    one_error(capsys, *ev, "--generate", "2", "--trace", "--json", str(model_copy / "curves.json"),
              needles=("--json (its bar chart)", "would overwrite a file of --model"))
    link = tmp_path / "link.txt"
    link.symlink_to(data)
    one_error(capsys, *ev, "--data", str(data), "--json", str(link), needles=("is --data",))
    assert digest(model_copy, data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "mc", "puzzles.txt"]  # nothing written


def test_solve_curves_and_export_outputs_onto_inputs_are_refused(capsys, tmp_path, model_copy):
    before = digest(model_copy)
    one_error(capsys, "solve", "--model", str(model_copy), "--order-png", str(model_copy / "curves.png"), PUZZLE,
              needles=("--order-png", "would overwrite a file of --model"))
    metrics = tmp_path / "m.png"  # a metrics file with an image's name
    shutil.copy(model_copy / "metrics.jsonl", metrics)
    one_error(capsys, "curves", str(metrics), "--out", str(metrics), needles=("--out", "an input of this command"))
    one_error(capsys, "export", "--model", str(model_copy), "--onnx", str(tmp_path / "x.onnx"), "--report",
              str(model_copy / "config.json"), needles=("--report", "would overwrite a file of --model"))
    one_error(capsys, "export", "--model", str(model_copy), "--onnx", str(tmp_path / "x.onnx"), "--report",
              str(tmp_path / "x.onnx"), needles=("--report would be written to", "where --onnx goes"))
    assert digest(model_copy) == before
    assert digest(metrics) == {str(metrics): hashlib.sha256((model_copy / "metrics.jsonl").read_bytes()).hexdigest()}


def test_check_outputs_allows_new_files_beside_an_input(tmp_path, model_copy):
    from unmask.core.files import check_outputs

    check_outputs([("--json", model_copy / "report.json"), ("--png", tmp_path / "a.png")], [("--model", model_copy)])
    hard = tmp_path / "hard.json"
    os.link(model_copy / "config.json", hard)
    with pytest.raises(InputError, match="is --model"):
        check_outputs([("--json", hard)], [("--model", model_copy / "config.json")])
    with pytest.raises(InputError, match="where --a goes"):
        check_outputs([("--a", tmp_path / "x"), ("--b", tmp_path / "." / "x")], [])


# -- 3. unbounded sizes are checked before the work ------------------------------------------------------------------
@pytest.mark.parametrize("key", ["train.data_size", "train.val_size"])
def test_absurd_data_sizes_are_refused_before_training(capsys, tmp_path, key):
    one_error(capsys, "train", "--config", str(CONFIG), "--out", str(tmp_path / "run"), "--set", f"{key}={HUGE}",
              "--no-progress", needles=(f"{key} = 1,000,000,000,000 examples needs at least", f"reduce {key}"))
    assert not (tmp_path / "run").exists()


def test_absurd_export_accuracy_is_refused_before_exporting(capsys, tmp_path):
    one_error(capsys, "export", "--model", str(MODEL), "--onnx", str(tmp_path / "m.onnx"), "--accuracy", HUGE,
              needles=("--accuracy 1,000,000,000,000 needs at least", "decode fewer puzzles"))
    assert list(tmp_path.iterdir()) == []


def experiment(tmp_path: Path, extra: str = "", *, data: str = "n = 2", name: str = "") -> Path:
    f = tmp_path / "e.toml"
    f.write_text(textwrap.dedent(f'''
        title = "t"
        {f'name = "{name}"' if name else ""}
        [models.a]
        config = "{CONFIG}"
        overrides = {json.dumps([*TINY, f'task.cache_dir="{tmp_path / "cache"}"'])}
        [datasets.test]
        {data}
        [[rows]]
        label = "margin"
        model = "a"
        strategy = "margin"
        {extra}
    '''))
    return f


@pytest.mark.parametrize(("data", "flags", "needle"), [
    (f"n = {HUGE}", (), "datasets.test: n = 1,000,000,000,000 examples needs at least"),
    ("n = 2", ("--n", HUGE), "datasets.test: n = 1,000,000,000,000 examples needs at least"),
    ("n = 2\nsplit = \"tset\"", (), "datasets.test: unknown split 'tset'"),
])
def test_experiment_datasets_are_checked_before_training(capsys, tmp_path, data, flags, needle):
    f = experiment(tmp_path, data=data)
    one_error(capsys, "experiment", str(f), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
              "--no-progress", *flags, needles=(needle,))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


# -- 6. no tracebacks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [str(2**63), str(2**64 + 5), "-1", "-9223372036854775809", "1.5"])
@pytest.mark.parametrize("command", ["solve", "eval", "experiment"])
def test_seeds_outside_int64_are_refused(capsys, command, seed):
    args = {"solve": ("solve", PUZZLE), "eval": ("eval", "--generate", "2"), "experiment": ("experiment", "table2")}
    one_error(capsys, *args[command], f"--seed={seed}", needles=("argument --seed",))


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_train_seed_outside_int64_is_refused(capsys, tmp_path, seed):
    one_error(capsys, "train", "--config", str(CONFIG), "--out", str(tmp_path / "r"), "--set", f"train.seed={seed}",
              needles=("train.seed",))


def test_the_largest_train_seed_trains(tmp_path):
    from unmask.core.training.trainer import train

    sets = [*TINY, "train.val_size=2", f"train.seed={2**63 - 1}", f'out="{tmp_path / "run"}"',
            f'task.cache_dir="{tmp_path / "cache"}"']
    assert (train(str(CONFIG), sets, progress=False) / "model.safetensors").is_file()


@pytest.mark.parametrize("args", [
    ("eval", "--data", ""), ("eval", "--generate", "2", "--json", ""), ("solve", "--model", "", PUZZLE),
    ("solve", "--order-png", "", PUZZLE), ("eval", "--generate", "2", "--model", ""),
    ("experiment", "table2", "--results", ""), ("train", "--config", str(CONFIG), "--out", ""),
])
def test_empty_paths_are_errors(capsys, args):
    one_error(capsys, *args, needles=("expected a path, got ''",))


@pytest.mark.parametrize("flag", ["--model", "--onnx", "--report"])
def test_export_empty_paths_are_errors(capsys, tmp_path, flag):
    args = {"--model": str(MODEL), "--onnx": str(tmp_path / "m.onnx"), "--report": str(tmp_path / "r.json"), flag: ""}
    one_error(capsys, "export", *(x for k, v in args.items() for x in (k, v)), needles=(f"{flag} is empty",))


@pytest.mark.parametrize("name", ["x.txt", "x", "plot.json", "dir/"])
def test_plots_without_an_image_type_are_refused_before_decoding(capsys, tmp_path, name, monkeypatch):
    import unmask.core.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_with", lambda *a, **k: pytest.fail("decoded before the check"))
    out = str(tmp_path / name)
    one_error(capsys, "solve", "--order-png", out, PUZZLE, needles=("argument --order-png", "end it in .png"))
    one_error(capsys, "curves", str(MODEL), "--out", out, needles=("argument --out", "end it in .png"))


@pytest.mark.parametrize("record", [
    {"step": "x", "loss": 1.0}, {"step": 5, "loss": "a"}, {"step": 5, "loss": 1.0, "samples": "z"},
    {"step": 5, "loss": 1.0, "train_seconds": "z"}, {"step": 5, "val_margin": "s"}, {"step": 1.5, "loss": 1.0},
    {"step": 5, "val_margin": 0.5, "train_seconds": [1]}, {"step": True, "loss": 1.0},
])
def test_mistyped_metrics_records_name_the_line(capsys, tmp_path, record):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "loss": 2.0, "samples": 4}\n' + json.dumps(record) + "\n")
    one_error(capsys, "curves", str(f), "--out", str(tmp_path / "c.png"),
              needles=(f"{f}:2:", "the metrics file is damaged"))
    assert not (tmp_path / "c.png").exists()


def test_a_diverged_loss_is_still_plotted(capsys, tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "loss": 2.0, "samples": 4}\n{"step": 2, "loss": NaN, "samples": 8}\n')
    code, _, err = run(capsys, "curves", str(f), "--out", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file(), err


def test_deeply_nested_config_files_are_one_line(capsys, tmp_path):
    toml = tmp_path / "deep.toml"
    toml.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_error(capsys, "train", "--config", str(toml), needles=("nests arrays or tables too deeply",))
    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(MODEL / "model.safetensors", model)
    (model / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    one_error(capsys, "solve", "--model", str(model), PUZZLE, needles=(f"model '{model}'", "too deeply"))
    one_error(capsys, "train", "--config", str(CONFIG), "--set", "train.lr=" + "[" * 100_000,
              needles=("too deeply",))


# -- 7. experiment typos are found before training --------------------------------------------------------------------
def test_experiment_device_is_checked_before_training(capsys, tmp_path, monkeypatch):
    import torch

    f = experiment(tmp_path)
    base = ("experiment", str(f), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"))
    one_error(capsys, *base, "--device", "bogus", needles=("--device 'bogus' is not a device; use auto, cpu or cuda",))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_error(capsys, *base, "--device", "cuda", needles=("needs a CUDA GPU",))
    assert not (tmp_path / "runs").exists()


# -- 9. nonsense refused ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../trav", "/tmp/abs", "a/b", ".hidden", "..", "x\\\\y"])
def test_experiment_names_stay_inside_results(capsys, tmp_path, name):
    from unmask.core.experiment import load_experiment

    with pytest.raises(ConfigError, match="must be a plain file name"):
        load_experiment(experiment(tmp_path, name=name))
    plot = f'[[plots]]\nname = "{name}"\noption = "steps"\ncurves = ["margin"]'
    with pytest.raises(ConfigError, match="plots .*must be a plain file name"):
        load_experiment(experiment(tmp_path, extra=plot))


# -- 10. temporary files of killed writers ---------------------------------------------------------------------------
def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_write_json_removes_temps_of_killed_writers(tmp_path):
    from unmask.core.config import write_json

    dead = dead_pid()
    stale = [f".r.json.tmp{dead}", f".other.json.tmp{dead}"]
    for name in stale:
        (tmp_path / name).write_text("{")
    live = tmp_path / f".r.json.tmp{os.getppid()}"
    live.write_text("{")
    write_json(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "r.json", stale[1]])


def test_export_removes_temps_of_killed_exports(capsys, tmp_path, monkeypatch):
    import unmask.export.onnx as onnx_export

    dead = dead_pid()
    out = tmp_path / "out"
    out.mkdir()
    stale = [f".m.tmp{dead}.onnx", f".p.tmp{dead}.plan", f".p.tmp{dead}.plan.json"]
    for name in stale:
        (out / name).write_bytes(b"partial")
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: {})
    code, _, err = run(capsys, "export", "--model", str(MODEL), "--onnx", str(out / "m.onnx"), "--no-parity")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(stale[1:])  # only the ONNX file's
    from unmask.core.files import remove_stale_temps

    assert sorted(p.name for p in remove_stale_temps(out, "p.plan")) == sorted(stale[1:])


# -- 11. plugin errors name the right plugin --------------------------------------------------------------------------
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], entry_points: str) -> None:
    site = tmp_path / "site"
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(textwrap.dedent(text))
    dist = site / "twin_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: twin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture()
def fresh_registries():
    from unmask.core.registry import registries

    for r in registries.values():
        r.reset()
    yield
    for r in registries.values():
        r.reset()


PLUGINS = '''
from unmask.core.strategy import ScoreStrategy

class Boom(ScoreStrategy):
    """Fails when built."""
    def __init__(self, options=None):
        raise RuntimeError("kaboom")

class Runtime:
    """A runtime of the same package."""
    suffixes = ("dir",)
'''


@pytest.mark.parametrize("layout", ["one module", "two modules"])
def test_a_strategy_error_names_the_strategy_not_the_runtime_of_its_package(capsys, tmp_path, monkeypatch,
                                                                           fresh_registries, layout):
    from unmask.core.registry import runtimes, strategies

    pkg = f"twin_{layout.replace(' ', '_')}"  # names per case: sys.modules and the registries keep what was loaded
    if layout == "one module":
        files = {f"{pkg}/__init__.py": "", f"{pkg}/plugins.py": PLUGINS}
        eps = f"[unmask_strategies]\n{pkg} = {pkg}.plugins:Boom\n[unmask_runtimes]\ntwin = {pkg}.plugins:Runtime\n"
    else:
        files = {f"{pkg}/__init__.py": "", f"{pkg}/strat.py": PLUGINS, f"{pkg}/rt.py": "class Runtime: pass\n"}
        eps = f"[unmask_strategies]\n{pkg} = {pkg}.strat:Boom\n[unmask_runtimes]\ntwin = {pkg}.rt:Runtime\n"
    install(tmp_path, monkeypatch, files, eps)
    strategies.reset()
    runtimes.reset()
    one_error(capsys, "solve", "--model", str(MODEL), "--strategy", pkg, PUZZLE,
              needles=(f"error: strategy '{pkg}' (package 'twin-pkg') failed: RuntimeError: kaboom",))


def test_a_plugin_calling_sys_exit_at_import_is_a_broken_plugin(capsys, tmp_path, monkeypatch, fresh_registries):
    install(tmp_path, monkeypatch, {"exit_pkg/__init__.py": "", "exit_pkg/s.py": "import sys\nsys.exit(7)\n"},
            "[unmask_strategies]\nquitter = exit_pkg.s:S\n[unmask_commands]\nquit = exit_pkg.s\n")
    code, out, err = run(capsys, "list", "strategies")
    assert code == 0, err
    assert "margin" in out and "vanilla" in out and "quitter" not in out  # the others still listed
    assert "strategy plugin 'quitter'" in err and "called sys.exit(7) while being imported" in err
    assert "command 'quit'" in err
    assert "Traceback" not in err
    one_error(capsys, "solve", "--strategy", "quitter", PUZZLE, needles=("strategy plugin 'quitter'", "sys.exit(7)"))


# -- small things -----------------------------------------------------------------------------------------------------
def test_the_parser_is_built_without_torch():
    code = ("import sys, time; t = time.perf_counter(); from unmask.core.cli import build_parser; "
            "p = build_parser(); p.format_help(); print(time.perf_counter() - t); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "unmask.core.cli", "serve", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--max-batch" in p.stdout and "--shutdown-timeout" in p.stdout, p.stderr


def test_eval_has_no_progress_bars_when_not_on_a_terminal(capsys):
    code, out, err = run(capsys, "eval", "--generate", "2", "--strategies", "margin", "--steps", "5")
    assert code == 0 and "% solved" in out, err
    assert "eval margin" not in err and "it/s" not in err and "puzzle/s" not in err, err
    code, out, err = run(capsys, "eval", "--generate", "2", "--strategies", "margin", "--steps", "5", "--no-progress")
    assert code == 0 and "eval margin" not in err


def test_progress_bars_follow_the_terminal(monkeypatch):
    import argparse

    from unmask.core import cli

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli._progress(argparse.Namespace(no_progress=False))
    assert not cli._progress(argparse.Namespace(no_progress=True))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not cli._progress(argparse.Namespace(no_progress=False))


def test_trained_models_follow_the_users_umask(tmp_path):
    from unmask.core.training.trainer import train

    old = os.umask(0o022)
    try:
        sets = [*TINY, f'out="{tmp_path / "run"}"', f'task.cache_dir="{tmp_path / "cache"}"']
        final = train(str(CONFIG), sets, progress=False)
    finally:
        os.umask(old)
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    for d in [final, *ckpts]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
        for f in d.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_apply_umask(tmp_path):
    from unmask.core.files import apply_umask

    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "f").write_text("x")
    os.chmod(d / "f", 0o600)
    old = os.umask(0o027)
    try:
        apply_umask(d)
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750 and stat.S_IMODE((d / "f").stat().st_mode) == 0o640


def test_extreme_temperatures_sample_without_nan(capsys):
    code, out, err = run(capsys, "solve", "--strategy", "margin:value=sample:temperature=1e-45", PUZZLE)
    assert code == 0 and "solved" in out, out + err  # the limit T -> 0 is argmax
    code, out, err = run(capsys, "solve", "--strategy", "margin:value=sample:temperature=1e308", PUZZLE)
    digits = [c for c in out.split("solved")[0].split("NOT")[0] if c.isdigit()]
    assert len(set(digits)) > 1, out  # T -> inf is uniform over the digits, never one value everywhere


def test_every_model_directory_and_data_cache_follows_the_umask(tmp_path):
    """save_model_dir itself (not only the trainer) and the tasks' generated-data caches give 0644 / 0755 under
    umask 022, not mkstemp's 0600 / mkdtemp's 0700."""
    import os
    import stat

    import torch

    from unmask.core.task import build_task
    from unmask.core.training.checkpoint import save_model_dir

    old = os.umask(0o022)
    try:
        out = save_model_dir(tmp_path / "m", {"w": torch.ones(2)},
                             {"task": {"name": "sudoku"}, "backbone": {"name": "transformer"}})
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in out.iterdir())
        build_task({"name": "sudoku", "cache_dir": str(tmp_path / "cache")}).generate("test", 2, seed=0)
        files = [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]
        assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)
    finally:
        os.umask(old)
