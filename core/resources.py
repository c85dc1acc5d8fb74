"""What ships with unmask, and where its runs and caches go when the user does not say.

The default model (``models/sudoku-default``) and the configs (``configs/*.toml``) are package data: setuptools
maps the repository's ``models/`` and ``configs/`` folders to ``unmask/models`` and ``unmask/configs`` in a wheel
(pyproject ``package-dir``), so in an installed package and in a source checkout (editable install) they sit at the
same place relative to ``unmask.core``. ``unmask solve`` / ``eval`` without ``--model`` use the default model;
``unmask train --config NAME`` finds ``configs/NAME.toml``.

Runs and data caches of packaged resources (a config named rather than given as a path; the default model of an
installed package - in a source checkout it keeps the repository's ``data/cache``) go to :func:`home`:
``$UNMASK_HOME`` if set, else the platform's user cache (``$XDG_CACHE_HOME/unmask``, by default
``~/.cache/unmask``), never silently into the current directory. Paths the user gives (``--config FILE``,
``--out``, ``--set out=...``) are used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

from unmask.core.errors import CheckpointError, ConfigError

DEFAULT_FILE = "DEFAULT"  # models/DEFAULT names the packaged model used when --model is not given
_ROOT = Path(__file__).resolve().parents[1]  # site-packages/unmask (wheel) or the repository (source checkout)


def home() -> Path:
    """Where runs (``runs/``) and data caches (``cache/``) of packaged resources go."""
    env = os.environ.get("UNMASK_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "unmask"


def source_checkout() -> bool:
    """True when unmask runs from its repository (an editable install), not from an installed wheel."""
    return (_ROOT / "pyproject.toml").is_file()


def models_dir() -> Path:
    return _ROOT / "models"


def configs_dir() -> Path:
    return _ROOT / "configs"


def default_model() -> Path:
    """The model directory ``unmask solve`` / ``eval`` use without ``--model``: the packaged model that
    ``models/DEFAULT`` names."""
    marker = models_dir() / DEFAULT_FILE
    try:
        name = marker.read_text().strip()
    except OSError:
        raise CheckpointError(f"no default model is installed ('{marker}' is missing); pass --model DIR") from None
    p = models_dir() / name
    if not (p / "config.json").is_file():
        raise CheckpointError(f"the default model is not installed ('{p}' is missing); pass --model DIR")
    return p


def packaged_configs() -> dict[str, Path]:
    """Config name -> file, for every packaged ``configs/*.toml``."""
    d = configs_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def packaged_name(p: Path, known: dict[str, Path], folders: tuple[Path, ...] = (Path("."),)) -> Path | None:
    """The packaged file that a bare name (``table2``, ``table2.toml``, or under one of ``folders``) stands for in
    ``known`` (name -> file), or None."""
    name = p.name[: -len(".toml")] if p.name.endswith(".toml") else p.name
    return known.get(name) if p.parent in folders else None


def find_config(spec: str) -> tuple[Path, bool]:
    """``(file, packaged)`` for ``--config``: an existing path as given, else a packaged config by name."""
    p = Path(spec)
    if p.is_file():
        return p, False
    known = packaged_configs()
    found = packaged_name(p, known, (Path("."), Path("configs")))
    if found is not None:
        return found, True
    raise ConfigError(f"config file '{spec}' not found, and it is not the name of a packaged config (packaged: "
                      f"{', '.join(known) or 'none'})")


__all__ = ["home", "source_checkout", "default_model", "packaged_configs", "packaged_name", "find_config", "models_dir",
           "configs_dir", "DEFAULT_FILE"]
