"""Typed configs: ``msgspec.Struct`` sections read from TOML, overridable with ``--set section.key=value``.

Unknown keys, wrong types and out-of-range values are one-line :class:`ConfigError`\\ s naming the key path.
A plugin section (``[task]``, ``[backbone]``, a strategy) holds ``name`` plus that plugin's own options, which are
decoded into the plugin's ``Options`` Struct after the name is looked up in its registry.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from unmask.core.errors import ConfigError, PluginError
from unmask.core.files import read_text, remove_stale_temps, temp_path
from unmask.core.registry import Registry

S = TypeVar("S", bound=msgspec.Struct)

_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section: keyword-only fields, unknown keys are errors, float values must be finite
    (``inf``/``nan`` pass msgspec's range bounds, e.g. ``ge=0``, but make no sense as an option anywhere)."""

    def __post_init__(self) -> None:
        for f in self.__struct_fields__:
            v = getattr(self, f)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"'{f}' must be a finite number, got {v}")


class NoOptions(Section):
    """A plugin without options of its own."""


def _fmt_path(prefix: str, sub: str) -> str:
    sub = re.sub(r"\[(\d+)\]", r"[\1]", sub).lstrip(".")
    return ".".join(p for p in (prefix, sub) if p) or "(top level)"


def convert(raw: Any, type_: type[S], path: str = "") -> S:
    """Decode ``raw`` (TOML/JSON builtins) into ``type_``; errors name the full key path."""
    try:
        return msgspec.convert(raw, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _PATH_RE.search(msg)
        sub = m.group("path") if m else ""
        what = _PATH_RE.sub("", msg)
        unknown = re.match(r"Object contains unknown field `([^`]+)`", what)
        if unknown:
            key = _fmt_path(path, f"{sub}.{unknown.group(1)}")
            allowed = ", ".join(sorted(f for f in getattr(_field_owner(type_, sub), "__struct_fields__", ())))
            raise ConfigError(f"unknown config key '{key}'; allowed keys here: {allowed}") from None
        missing = re.match(r"Object missing required field `([^`]+)`", what)
        if missing:
            key = _fmt_path(path, f"{sub}.{missing.group(1)}")
            raise ConfigError(f"missing required config key '{key}'") from None
        hint = ""
        if what.startswith("Invalid enum value"):
            choices = _literal_choices(type_, sub)
            if choices:
                hint = f"; expected one of: {', '.join(map(repr, choices))}"
        raise ConfigError(f"bad config value at '{_fmt_path(path, sub)}': {what[0].lower() + what[1:]}{hint}") from None


def _literal_choices(type_: Any, sub: str) -> tuple[Any, ...]:
    import typing

    parts = [p for p in sub.split(".") if p]
    if not parts:
        return ()
    owner = _field_owner(type_, ".".join(parts[:-1]))
    try:
        hint = typing.get_type_hints(owner, include_extras=False).get(parts[-1])
    except Exception:  # noqa: BLE001
        return ()
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return ()


def _field_owner(type_: Any, sub: str) -> Any:
    """The Struct type found by following ``sub`` (``.a.b``) from ``type_`` (best effort, for messages)."""
    cur = type_
    for part in [p for p in sub.split(".") if p]:
        hints = getattr(cur, "__annotations__", {})
        try:
            import typing

            hints = typing.get_type_hints(cur)
        except Exception:  # noqa: BLE001
            pass
        nxt = hints.get(part)
        if nxt is None or not isinstance(nxt, type):
            return cur
        cur = nxt
    return cur


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


# -- TOML files and overrides ---------------------------------------------------------------------------------------
def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass an existing TOML file (see configs/)")
    try:
        return tomllib.loads(read_text(p, "config file", ConfigError))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{p}' is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"config file '{p}' nests arrays or tables too deeply to read; a config is a few levels "
                          "deep, so the file is damaged or not a config") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (numbers, booleans, arrays, quoted strings); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(f"override value '{text[:40]}...' nests arrays or tables too deeply") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict (returns a new dict)."""
    out = json.loads(json.dumps(raw))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"bad override '{item}'; expected section.key=value, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"bad override key '{key}'; expected section.key=value, e.g. train.lr=3e-4")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = nxt
        node[parts[-1]] = parse_value(value.strip())
    return out


# -- plugin sections ------------------------------------------------------------------------------------------------
def split_plugin_section(raw: Any, path: str) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        return raw, {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{path}' must be a table with a 'name' key, got {type(raw).__name__}")
    if "name" not in raw:
        raise ConfigError(f"config section '{path}' needs a 'name' key naming the plugin")
    rest = dict(raw)
    name = rest.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"bad config value at '{path}.name': expected a string, got {type(name).__name__}")
    return name, rest


def resolve_plugin(registry: Registry, raw: Any, path: str) -> tuple[str, Any, Section]:
    """Look up ``raw['name']`` in ``registry`` and decode the remaining keys into the plugin's ``Options`` (a
    :class:`Section`, as the plugin contracts say)."""
    name, rest = split_plugin_section(raw, path)
    try:
        plugin = registry.get(name)
    except PluginError as exc:
        raise ConfigError(f"at '{path}.name': {exc}") from None
    options_type = getattr(plugin, "Options", NoOptions)
    return name, plugin, convert(rest, options_type, path)


def plugin_section(name: str, options: msgspec.Struct) -> dict[str, Any]:
    """The resolved (defaults filled in) dict form of a plugin section: ``{"name": ..., **options}``."""
    return {"name": name, **to_builtins(options)}


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temp file + rename); temporary files that killed writers left beside it are removed
    first (:func:`unmask.core.files.remove_stale_temps`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(p.parent, p.name)
    tmp = temp_path(p)
    try:
        tmp.write_text(json.dumps(to_builtins(data), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing failed (e.g. disk full)
