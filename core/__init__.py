"""unmask.core: the framework (registries, configs, the decode loop, training, evaluation).

Importing this package is cheap: it does not import torch or any plugin. Submodules that need torch
(``decode``, ``train``, ``evaluate``) import it themselves.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from unmask.core.errors import CheckpointError, ConfigError, DeviceError, InputError, PluginError, UnmaskError
from unmask.core.registry import backbones, registries, runtimes, strategies, tasks

try:
    __version__ = version("unmask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "UnmaskError",
    "ConfigError",
    "PluginError",
    "InputError",
    "CheckpointError",
    "DeviceError",
    "tasks",
    "backbones",
    "strategies",
    "runtimes",
    "registries",
]
