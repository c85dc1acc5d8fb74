"""Reading user files and checking output paths, with one-line errors.

Text files are UTF-8 (a leading byte-order mark, as some editors write it, is accepted and dropped); a file in
another encoding is an error naming the first line that is not UTF-8. Output paths are checked before the work
that produces them starts, so a typo in ``--json`` never costs an evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

from unmask.core.errors import InputError, UnmaskError


def read_text(path: str | os.PathLike, what: str = "file", error: type[UnmaskError] = InputError) -> str:
    """The UTF-8 text of ``path`` (BOM dropped); ``error`` names the line of the first non-UTF-8 byte."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} '{p}': {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{what} '{p}' line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}; e.g. Latin-1); save it as UTF-8"
        ) from None


def check_writable(path: str | os.PathLike, flag: str, *, directory: bool = False) -> Path:
    """``path`` can be created or overwritten: its nearest existing ancestor is a directory in which a file can be
    created (probed with a temporary file, removed at once; this also catches read-only file systems and works for
    root, for whom permission bits say nothing).

    ``flag`` names what the user typed (``--json``, ``train.out``) in the error. Nothing else is created. With
    ``directory`` the path itself must be (or become) a directory, otherwise a file.
    """
    import tempfile

    p = Path(path)
    if p.exists() and directory and not p.is_dir():
        raise InputError(f"{flag} '{p}' is a file, not a directory; choose another path")
    if p.exists() and not directory and p.is_dir():
        raise InputError(f"{flag} '{p}' is a directory; give a file path")
    anc = p.absolute() if (directory and p.is_dir()) else p.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(f"{flag} '{p}' cannot be written: '{anc}' is a file, not a directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".unmask-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{flag} '{p}' cannot be written: directory '{anc}': {exc.strerror or exc}; choose another "
                         "path") from None
    return p


__all__ = ["read_text", "check_writable"]
