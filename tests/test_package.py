"""unmask works as an installed package, without the repository.

The install test builds a wheel, installs it (not editable) into a fresh virtual environment whose dependencies come
from the running one, and runs the installed ``unmask`` from an empty directory: --version, solve without --model,
train from a packaged config name for 2 steps. ~30 s on an idle 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
TINY = [x for s in ("train.steps=2", "train.batch_size=8", "train.data_size=64", "train.val_size=0",
                     "backbone.d_model=32", "backbone.n_layers=1", "backbone.n_heads=2") for x in ("--set", s)]


def test_packaged_resources_resolve(monkeypatch, tmp_path):
    from unmask.core.errors import ConfigError
    from unmask.core.resources import default_model, find_config, home

    assert (default_model() / "model.safetensors").is_file()
    monkeypatch.chdir(tmp_path)  # no configs/ here: names and configs/NAME.toml come from the package
    path, packaged = find_config("sudoku-default")
    assert packaged and path.name == "sudoku-default.toml" and path.is_file()
    assert find_config("configs/sudoku-default.toml")[1]
    with pytest.raises(ConfigError, match="packaged: .*sudoku-default"):
        find_config("no-such-config")
    monkeypatch.setenv("UNMASK_HOME", str(tmp_path / "h"))
    assert home() == tmp_path / "h"
    monkeypatch.delenv("UNMASK_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert home() == tmp_path / "c" / "unmask"


def test_version(capsys):
    from unmask.core import __version__
    from unmask.core.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"unmask {__version__}"


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p


@pytest.mark.slow  # ~30-45 s (a wheel build, a venv, a solve and 2 training steps): run with -m slow
def test_non_editable_install_runs_without_the_repository(tmp_path):
    wheels, venv, cwd, home = tmp_path / "wheels", tmp_path / "venv", tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", UNMASK_HOME=str(home), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(ROOT)], tmp_path, env)
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "_unmask_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc., not unmask
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
        tmp_path, env)
    unmask = str(venv / "bin" / "unmask")
    where = run([str(venv / "bin" / "python"), "-c", "import unmask.core; print(unmask.core.__file__)"], cwd, env)
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the repository
    assert run([unmask, "--version"], cwd, env).stdout.startswith("unmask ")
    solved = run([unmask, "solve", PUZZLE], cwd, env)
    assert "solved;" in solved.stdout
    assert "sudoku-default" in run([unmask, "list", "models"], cwd, env).stdout
    curves = run([unmask, "curves", "sudoku-default", "--out", str(tmp_path / "c.png")], cwd, env)  # metrics ship
    assert curves.stdout.startswith("sudoku-default: ") and (tmp_path / "c.png").is_file()
    api = run([str(venv / "bin" / "python"), "-c", "import unmask; r = unmask.load('sudoku-default').solve("
               f"'{PUZZLE}'); print(r.solved, r.nfe)"], cwd, env)
    assert api.stdout.split() == ["True", "50"]
    trained = run([unmask, "train", "--config", "sudoku-default", "--no-progress", *TINY], cwd, env)
    assert f"model written to {home / 'runs' / 'sudoku-default' / 'model'}" in trained.stdout
    assert (home / "runs" / "sudoku-default" / "model" / "model.safetensors").is_file()
    assert list((home / "cache").glob("sudoku-train-*.npz"))  # the data cache is under UNMASK_HOME too
    assert list(cwd.iterdir()) == []  # nothing was written into the current directory
