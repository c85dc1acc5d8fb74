"""Errors that reach the user.

Every error raised for bad user input (a config key, a puzzle, a file, a plugin name, a missing GPU) is a
:class:`UnmaskError`. The CLI prints ``error: <message>`` on one line and exits with status 2, never a traceback.
Internal invariants use ``assert``.
"""

from __future__ import annotations


class UnmaskError(Exception):
    """An error caused by user input or the environment; its message is one line that says what to do."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)


class ConfigError(UnmaskError):
    """A config file or ``--set`` override is wrong (unknown key, wrong type, out of range)."""


class PluginError(UnmaskError):
    """A plugin name is unknown, collides with another, or failed to load."""


class InputError(UnmaskError):
    """User data (a puzzle, a data file) is malformed."""


class CheckpointError(UnmaskError):
    """A checkpoint or exported model is missing, corrupt, a pickle, or does not match the task."""


class DeviceError(UnmaskError):
    """A requested device or runtime (CUDA, TensorRT, an execution provider) is not available."""
