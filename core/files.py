"""Reading user files and checking output paths, with one-line errors.

Text files are UTF-8 (a leading byte-order mark, as some editors write it, is accepted and dropped); a file in
another encoding is an error naming the first line that is not UTF-8. Output paths are checked before the work
that produces them starts, so a typo in ``--json`` never costs an evaluation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
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


# -- temporary files ------------------------------------------------------------------------------------------------
# unmask writes every artifact to a temporary entry beside its target, then renames it into place. The temporary
# names carry the writer's pid: ``.<name>.tmp<pid>[.<ext>...]`` (JSON, PNG, ONNX files, a plan and its .plan.json)
# and ``.<name>.tmp-<pid>-<rand>`` / ``.<name>.old-<pid>`` (checkpoint directories). A SIGKILL leaves them behind;
# ``remove_stale_temps`` deletes those whose writer is gone (never another live process's), plus checkpoint temp
# directories of the older, pid-less naming (``.<name>.tmp-<rand>``) once they are an hour old.
_TEMP_RE = re.compile(r"^\.(?P<base>.+?)\.(?:tmp-?|old-)(?P<pid>\d+)(?:-[A-Za-z0-9_]+|(?:\.[A-Za-z0-9]+)+)?$")
_OLD_TEMP_RE = re.compile(r"^\.(?P<base>.+?)\.tmp-[A-Za-z0-9_]{6,}$")
OLD_TEMP_AGE_S = 3600.0


def temp_path(target: str | os.PathLike, *, keep_suffix: bool = False) -> Path:
    """This process's temporary name beside ``target`` (same directory, so the final rename is atomic)."""
    t = Path(target)
    if keep_suffix and t.suffix:
        return t.with_name(f".{t.stem}.tmp{os.getpid()}{t.suffix}")
    return t.with_name(f".{t.name}.tmp{os.getpid()}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: in progress in this process, or removed by the writer itself
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, base: str | None = None) -> list[Path]:
    """Delete the temporary entries in ``directory`` left by dead unmask writers (of target ``base`` only, if
    given: its file name or stem); returns what was removed. Errors are ignored (another cleaner may race us)."""
    import shutil
    import time

    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        name = e.name
        if not name.startswith("."):
            continue
        m = _TEMP_RE.match(name)
        if m is not None:
            stale = not _alive(int(m.group("pid")))
        else:
            m = _OLD_TEMP_RE.match(name)
            try:
                stale = m is not None and e.is_dir() and now - e.stat().st_mtime > OLD_TEMP_AGE_S
            except OSError:
                continue
        if m is None or not stale:
            continue
        if base is not None and m.group("base") not in (base, Path(base).stem):
            continue
        try:
            shutil.rmtree(e) if e.is_dir() and not e.is_symlink() else e.unlink()
            removed.append(e)
        except OSError:
            pass
    return removed


# -- outputs against inputs -----------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps", ".ps")
"""File types the plots can be written as (matplotlib picks the format from the suffix; these need no extra
package)."""


def check_image_path(path: str | os.PathLike, flag: str) -> Path:
    """``path`` ends in an image suffix matplotlib writes (checked before the work whose plot it is)."""
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        what = f"its type '{p.suffix}'" if p.suffix else "it has no file type"
        raise InputError(f"{flag} '{p}': {what} is not an image type unmask writes; end the name in .png (or "
                         f"{', '.join(s for s in IMAGE_SUFFIXES if s != '.png')})")
    return p


def _key(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _key(a) == _key(b)


def check_outputs(outputs: Sequence[tuple[str, str | os.PathLike]], inputs: Sequence[tuple[str, str | os.PathLike]]
                  ) -> None:
    """Refuse, before any work, an output that would overwrite one of the command's inputs, and two outputs on one
    path (the second would silently replace the first).

    ``outputs`` and ``inputs`` are (what the user typed, path) pairs, e.g. ``("--json", "r.json")`` or
    ``("--model", "runs/x")``. An input directory (a model or run directory) stands for every file in it: an output
    onto an existing file below it is refused; a new file beside a model's files is not. Paths are compared after
    resolving symbolic links (and as the same file when hard-linked)."""
    seen: list[tuple[str, Path]] = []
    for flag, out in outputs:
        o = Path(out)
        for other_flag, other in seen:
            if _key(o) == _key(other):
                raise InputError(f"{flag} would be written to '{o}', where {other_flag} goes: one would overwrite "
                                 f"the other; change the path of {flag.split(' (')[0]}")
        seen.append((flag, o))
        for in_flag, src in inputs:
            i = Path(src)
            if not i.exists():
                continue
            if i.is_dir():
                inside = _key(o).is_relative_to(_key(i))
                if _key(o) == _key(i) or (inside and o.exists() and not o.is_dir()):
                    raise InputError(f"{flag} '{o}' would overwrite {'' if _key(o) == _key(i) else 'a file of '}"
                                     f"{in_flag} '{i}' (an input of this command); write it somewhere else")
            elif (o.exists() and _same_file(o, i)) or _key(o) == _key(i):
                raise InputError(f"{flag} '{o}' is {in_flag} '{i}', an input of this command, and would be "
                                 "overwritten; write it somewhere else")


# -- permissions ----------------------------------------------------------------------------------------------------
def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a directory and everything below it) the permissions a plain ``open`` /
    ``mkdir`` would have given under the user's umask (0644 files and 0755 directories under the usual 022).

    Temporary files and directories (``tempfile.mkstemp`` / ``mkdtemp``, safetensors' writer) are created 0600 /
    0700 whatever the umask says; an artifact renamed into place from one would be unreadable to another account
    or container that serves it. Symbolic links are left alone."""
    mask = current_umask()
    p = Path(path)
    todo = [p]
    while todo:
        q = todo.pop()
        if q.is_symlink():
            continue
        try:
            if q.is_dir():
                os.chmod(q, 0o777 & ~mask)
                todo.extend(q.iterdir())
            else:
                mode = q.stat().st_mode & 0o111  # keep an executable bit (none of unmask's files has one)
                os.chmod(q, (0o666 | mode) & ~mask)
        except OSError:
            continue


__all__ = ["read_text", "check_writable", "temp_path", "remove_stale_temps", "check_image_path", "check_outputs",
           "apply_umask", "IMAGE_SUFFIXES"]
