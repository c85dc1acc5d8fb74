"""What ships with unmask, and where its runs and caches go when the user does not say.

The default model (``models/sudoku-default``) and the configs (``configs/*.toml``) are package data: setuptools
maps the repository's ``models/`` and ``configs/`` folders to ``unmask/models`` and ``unmask/configs`` in a wheel
(pyproject ``package-dir``), so in an installed package and in a source checkout (editable install) they sit at the
same place relative to ``unmask.core``. ``unmask solve`` / ``eval`` without ``--model`` use the default model;
``unmask train --config NAME`` finds ``configs/NAME.toml``.

Models by name: wherever a model path is read (``solve``, ``eval``, ``serve``, ``export``, ``curves``, experiment
``reuse``, :func:`unmask.load`), a name works too (:func:`find_model`): a packaged model (a folder of ``models/``,
e.g. ``sudoku-default``) or a model another package ships through the entry point group ``unmask_models``, as spaCy
pipelines do::

    [project.entry-points.unmask_models]
    my-model = "my_pkg.models:model_path"     # a function returning the model's path, or a path attribute

A path that exists always wins over a name; ``unmask list models`` shows every name and its package.

Runs and data caches of packaged resources (a config named rather than given as a path; the default model of an
installed package - in a source checkout it keeps the repository's ``data/cache``) go to :func:`home`:
``$UNMASK_HOME`` if set, else the platform's user cache (``$XDG_CACHE_HOME/unmask``, by default
``~/.cache/unmask``), never silently into the current directory. Paths the user gives (``--config FILE``,
``--out``, ``--set out=...``) are used as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unmask.core.errors import CheckpointError, ConfigError, PluginError

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


MODELS_GROUP = "unmask_models"


@dataclass(frozen=True)
class ModelEntry:
    """A model known by name: packaged with unmask (``path`` set) or shipped by another package through the entry
    point group ``unmask_models`` (``entry_point``: ``"pkg.module:function"`` returning its path, or
    ``"pkg.module:ATTRIBUTE"`` holding it)."""

    name: str
    package: str
    path: Path | None = None
    entry_point: Any = None

    @property
    def source(self) -> str:
        """Where the model comes from, in words (its folder, or its entry point)."""
        return str(self.path) if self.path is not None else f"entry point {self.entry_point.value}"

    def resolve(self) -> Path:
        """The model's path; an entry point that fails, or names no existing path, is a :class:`PluginError` naming
        it and its package."""
        if self.path is not None:
            return self.path
        ep = self.entry_point
        where = f"model '{self.name}' (entry point {ep.value} in group {MODELS_GROUP}, package '{self.package}')"
        from unmask.core.registry import load_failure

        try:
            obj = ep.load()
            value = obj() if callable(obj) else obj
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - third-party code: one line naming it
            raise PluginError(f"{where} failed to load: {load_failure(exc)}; report it to that package") from None
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise PluginError(f"{where} gave {type(value).__name__} {str(value)[:60]!r}, not a model path; the "
                              "entry point must name a function returning a path, or a path attribute")
        p = Path(value)
        if not p.exists():
            raise PluginError(f"{where} names '{p}', which does not exist; reinstall that package")
        return p


def packaged_models() -> dict[str, Path]:
    """Model name -> directory, for every model folder of the installed ``models/``."""
    d = models_dir()
    if not d.is_dir():
        return {}
    return {p.name: p for p in sorted(d.iterdir()) if (p / "config.json").is_file()}


def model_entries() -> tuple[dict[str, ModelEntry], list[str]]:
    """(name -> :class:`ModelEntry`, collisions): the packaged models and those of the ``unmask_models`` entry
    points. A name taken by a packaged model, or by two packages, is left out and named in ``collisions``."""
    from importlib.metadata import entry_points

    from unmask.core.registry import BUILTIN_PACKAGE, _dist_name

    found = {name: ModelEntry(name, BUILTIN_PACKAGE, path=p) for name, p in packaged_models().items()}
    collisions: dict[str, str] = {}
    third: dict[str, ModelEntry] = {}
    for ep in entry_points(group=MODELS_GROUP):
        pkg = _dist_name(ep)
        if ep.name in found:
            collisions[ep.name] = (f"model '{ep.name}' from package '{pkg}' (entry point {ep.value}) collides with "
                                   f"the packaged model of '{BUILTIN_PACKAGE}'; rename it in {pkg}'s "
                                   f"[project.entry-points.{MODELS_GROUP}]")
        elif ep.name in third and third[ep.name].package != pkg:
            collisions[ep.name] = (f"model '{ep.name}' is provided by two packages, '{third[ep.name].package}' and "
                                   f"'{pkg}'; uninstall one or rename its entry point in "
                                   f"[project.entry-points.{MODELS_GROUP}]")
        else:
            third[ep.name] = ModelEntry(ep.name, pkg, entry_point=ep)
    for name in collisions:
        third.pop(name, None)
    return {**found, **dict(sorted(third.items()))}, list(collisions.values())


def model_names() -> list[str]:
    """Every name :func:`find_model` knows."""
    return list(model_entries()[0])


def default_model_name() -> str:
    """The name of the packaged default model (what ``models/DEFAULT`` holds)."""
    default_model()  # says what is missing
    return (models_dir() / DEFAULT_FILE).read_text().strip()


def find_model(spec: str | os.PathLike | None = None) -> Path:
    """The model a ``--model`` value (or :func:`unmask.load`'s argument) means: a path that exists, as given; else a
    model name (a packaged model, ``models/NAME``, or one of the ``unmask_models`` entry points); ``None`` or ``""``:
    the packaged default model. Anything else is a :class:`CheckpointError` listing the known names."""
    if spec is None or not str(spec).strip():
        return default_model()
    p = Path(spec)
    if p.exists():
        return p
    entries, collisions = model_entries()
    name = str(spec)
    if name in entries:
        return entries[name].resolve()
    for msg in collisions:
        if msg.startswith(f"model '{name}' "):
            raise PluginError(msg)
    packaged = packaged_name(p, packaged_models(), (Path("models"),))
    if packaged is not None:  # models/sudoku-default from outside the repository: the packaged one
        return packaged
    raise CheckpointError(f"model '{spec}' does not exist as a path and is not a model name (known: "
                          f"{', '.join(entries) or 'none'}); pass a model directory, a run directory, .onnx or .plan, "
                          "or a name from 'unmask list models'")


def model_label(spec: str | os.PathLike | None) -> str:
    """How reports name the model of ``spec``: the name itself for a model given by name (the packaged default's
    name without one), else the path as given."""
    if spec is None or not str(spec).strip():
        return default_model_name()
    return str(spec)


__all__ = ["home", "source_checkout", "default_model", "packaged_configs", "packaged_name", "find_config", "models_dir",
           "configs_dir", "DEFAULT_FILE", "MODELS_GROUP", "ModelEntry", "packaged_models", "model_entries",
           "model_names", "default_model_name", "find_model", "model_label"]


def engine_task(engine: Any, path: str | os.PathLike) -> Any:
    """The task of the model behind ``engine`` (opened from ``path``), bound to its directory (a text model's
    tokenizer); a packaged model's data cache goes under :func:`home`, never into the current directory."""
    from unmask.core.task import build_task

    section = dict(engine.config["task"])
    cache = section.get("cache_dir")
    packaged = not source_checkout() and models_dir() in Path(path).resolve().parents
    if cache and not Path(str(cache)).is_absolute() and packaged:
        section["cache_dir"] = str(home() / "cache")
    return build_task(section, "model task", model=path)
