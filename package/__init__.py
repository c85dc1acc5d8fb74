"""unmask: masked diffusion models that plan their decoding order at inference time.

The top-level package: ``unmask.load(name_or_path)`` opens a model with the command line's defaults and decodes
puzzles (``.solve``) or text (``.generate``); see :mod:`unmask.core.api`. The framework is ``unmask.core``, the
built-in plugins ``unmask.plugins``, the exporters ``unmask.export``. Importing ``unmask`` is cheap: torch and the
plugins load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unmask.core import __version__

if TYPE_CHECKING:
    from unmask.core.api import Generation, Model, Solution, load

_API = ("load", "Model", "Solution", "Generation")


def __getattr__(name: str) -> Any:
    if name in _API:
        from unmask.core import api

        return getattr(api, name)
    raise AttributeError(f"module 'unmask' has no attribute {name!r}")


__all__ = ["__version__", "load", "Model", "Solution", "Generation"]
