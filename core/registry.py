"""Plugin registries: tasks, backbones, strategies, runtimes, objectives.

Built on :mod:`catalogue`. Built-in plugins are the modules of ``unmask.plugins.<kind>`` (one file per plugin, the
file name is the registry key, files starting with ``_`` are helpers); each registers itself with
``@<registry>.register("name")`` when imported. Modules are imported lazily, on first lookup, so
``import unmask.core`` stays cheap.

Third-party packages add plugins through entry points, with nothing but their own ``pyproject.toml``::

    [project.entry-points.unmask_strategies]
    my_strategy = "my_pkg.strategy:MyStrategy"

Rules: an unknown name is an error listing the available names; a third-party name that collides with a built-in
(or with another package's) is an error naming both packages, never a silent shadow; a plugin that fails to import
is a warning naming its entry point and package, and every other plugin keeps working.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import catalogue

from unmask.core.errors import PluginError

BUILTIN_PACKAGE = "unmask"


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded; the others still work."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    description: str
    package: str


def _first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry:
    """One kind of plugin (``tasks``, ``backbones``, ``strategies``, ``runtimes`` or ``objectives``)."""

    def __init__(self, kind: str, singular: str) -> None:
        self.kind = kind
        self.singular = singular
        self.group = f"unmask_{kind}"
        self._catalogue = catalogue.create("unmask", kind, entry_points=False)
        self._builtin_pkg = f"unmask.plugins.{kind}"
        self._builtins_loaded = False
        self._third_party: dict[str, EntryPoint] | None = None
        self._collisions: dict[str, str] = {}
        self._packages: dict[str, str] = {}
        self._failed: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator. Registering a taken name is an error."""

        def do(o: Any) -> Any:
            if name in self._catalogue.get_all():
                existing = self._catalogue.get(name)
                if existing is not o and getattr(existing, "__qualname__", None) != getattr(o, "__qualname__", 1):
                    raise PluginError(f"{self.singular} '{name}' is registered twice ({existing!r} and {o!r})")
            self._catalogue.register(name, func=o)
            module = getattr(o, "__module__", "") or ""
            self._packages.setdefault(name, BUILTIN_PACKAGE if module.startswith("unmask.") else module.split(".")[0])
            return o

        return do if obj is None else do(obj)

    # -- discovery ----------------------------------------------------------------------------------------------
    def builtin_names(self) -> list[str]:
        try:
            pkg = importlib.import_module(self._builtin_pkg)
        except ImportError:  # pragma: no cover - broken install
            return []
        return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))

    def _load_builtin(self, name: str) -> None:
        importlib.import_module(f"{self._builtin_pkg}.{name}")
        if name not in self._catalogue.get_all():
            raise PluginError(
                f"built-in module {self._builtin_pkg}.{name} did not register a {self.singular} named '{name}'"
            )

    def _load_all_builtins(self) -> None:
        if self._builtins_loaded:
            return
        for name in self.builtin_names():
            self._load_builtin(name)
        self._builtins_loaded = True

    def _scan_entry_points(self) -> dict[str, EntryPoint]:
        if self._third_party is not None:
            return self._third_party
        builtins = set(self.builtin_names())
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group):
            pkg = _dist_name(ep)
            if ep.name in builtins:
                self._collisions[ep.name] = (
                    f"{self.singular} '{ep.name}' from package '{pkg}' (entry point {ep.value}) collides with the "
                    f"built-in {self.singular} of package '{BUILTIN_PACKAGE}'; rename it in {pkg}'s "
                    f"[project.entry-points.{self.group}]"
                )
                continue
            if ep.name in found:
                other = _dist_name(found[ep.name])
                self._collisions[ep.name] = (
                    f"{self.singular} '{ep.name}' is provided by two packages, '{other}' and '{pkg}'; "
                    f"uninstall one or rename its entry point in [project.entry-points.{self.group}]"
                )
                continue
            found[ep.name] = ep
        for name in self._collisions:
            found.pop(name, None)
        self._third_party = found
        return found

    def _load_entry_point(self, name: str, ep: EntryPoint) -> bool:
        pkg = _dist_name(ep)
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - third-party code must not break the others
            msg = (
                f"{self.singular} plugin '{name}' (entry point {ep.value} in group {self.group}, package '{pkg}') "
                f"failed to load: {load_failure(exc)}"
            )
            self._failed[name] = " ".join(msg.split())
            warnings.warn(self._failed[name], PluginWarning, stacklevel=3)
            return False
        self._catalogue.register(name, func=obj)
        self._packages[name] = pkg
        return True

    def reset(self) -> None:
        """Forget discovered entry points (after installing a package at run time; used by tests)."""
        self._third_party = None
        self._collisions = {}
        self._failed = {}
        importlib.invalidate_caches()

    # -- lookup -------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """All usable names: built-ins and third-party plugins (collisions excluded)."""
        return sorted(set(self.builtin_names()) | set(self._scan_entry_points()))

    def get(self, name: str) -> Any:
        """The plugin registered as ``name``; unknown or broken names raise :class:`PluginError`."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {self.singular} name must be a non-empty string, got {name!r}")
        third = self._scan_entry_points()
        if name in self._collisions:
            raise PluginError(self._collisions[name])
        if name in self._catalogue.get_all():
            return self._catalogue.get(name)
        if name in self.builtin_names():
            self._load_builtin(name)
            return self._catalogue.get(name)
        if name in self._failed:
            raise PluginError(self._failed[name])
        if name in third:
            if self._load_entry_point(name, third[name]):
                return self._catalogue.get(name)
            raise PluginError(self._failed[name])
        available = ", ".join(self.names()) or "(none)"
        raise PluginError(f"unknown {self.singular} '{name}'; available: {available}")

    def __contains__(self, name: str) -> bool:
        return name in self.names() or name in self._catalogue.get_all()

    def info(self) -> list[PluginInfo]:
        """Name, one-line description and package of every plugin that loads (broken ones warn)."""
        self._load_all_builtins()
        for name, ep in self._scan_entry_points().items():
            if name not in self._catalogue.get_all() and name not in self._failed:
                self._load_entry_point(name, ep)
        out = []
        for name, obj in sorted(self._catalogue.get_all().items()):
            out.append(PluginInfo(name, _first_line(getattr(obj, "__doc__", None)), self._packages.get(name, "?")))
        return out

    def third_party_plugins(self) -> list[ThirdParty]:
        """Where each third-party plugin's code lives (module and attribute of its entry point), for errors that
        must name the plugin a failure came from."""
        out = []
        for name, ep in self._scan_entry_points().items():
            module, _, attr = ep.value.partition(":")
            out.append(ThirdParty(module.strip(), attr.strip().split(".")[0], f"{self.singular} '{name}'",
                                  _dist_name(ep)))
        return out

    def package(self, name: str) -> str | None:
        """The package that provides the loaded plugin ``name`` (None if it is not loaded)."""
        return self._packages.get(name)

    def collisions(self) -> list[str]:
        self._scan_entry_points()
        return list(self._collisions.values())

    def failures(self) -> list[str]:
        return list(self._failed.values())


@dataclass(frozen=True)
class ThirdParty:
    """A third-party plugin's code: its entry point's module and top-level attribute, what it is, its package."""

    module: str
    attr: str
    what: str  # "strategy 'boom'"
    package: str

    def match(self, module: str, qualname: str) -> float:
        """How surely code of ``module`` (function ``qualname``) is this plugin's: 3 its object's own code (e.g. its
        class's ``__init__``), 2 its module, 1 a submodule, 0.5 another module of its top-level package, 0 none."""
        if module == self.module:
            return 3 if self.attr and qualname.split(".")[0] == self.attr else 2
        if module.startswith(self.module + "."):
            return 1
        return 0.5 if module.split(".")[0] == self.module.split(".")[0] else 0


def load_failure(exc: BaseException) -> str:
    """What went wrong importing third-party code, in words: ``sys.exit(7)`` is no exception class a user knows."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while being imported"
    return f"{type(exc).__name__}: {exc}"


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        try:
            return dist.metadata["Name"] or dist.name
        except Exception:  # noqa: BLE001
            return getattr(dist, "name", "?")
    return ep.value.split(".")[0].split(":")[0]


tasks = Registry("tasks", "task")
backbones = Registry("backbones", "backbone")
strategies = Registry("strategies", "strategy")
runtimes = Registry("runtimes", "runtime")
objectives = Registry("objectives", "objective")

registries: dict[str, Registry] = {r.kind: r for r in (tasks, backbones, strategies, runtimes, objectives)}


def get_registry(kind: str) -> Registry:
    if kind not in registries:
        raise PluginError(f"unknown plugin kind '{kind}'; available: {', '.join(registries)}")
    return registries[kind]


Factory = Callable[..., Any]
