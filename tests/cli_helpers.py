"""Running ``unmask`` in-process in tests: its exit status and output, and the one-line error contract."""

from __future__ import annotations

import pytest

from unmask.core.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``unmask ARGS``."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error(capsys: pytest.CaptureFixture[str], *args: str, needles: tuple[str, ...] = ()) -> str:
    """``unmask ARGS`` must end with exit status 2 and exactly one ``error:`` line, its last, holding every needle
    (no traceback); returns that line."""
    code, out, err = run(capsys, *args)
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]  # (progress bars also go to stderr)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, out, err)
    assert err.strip().endswith(lines[0]), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
