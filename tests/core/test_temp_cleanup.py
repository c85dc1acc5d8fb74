"""Temporary files of killed or failed writes are cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unmask.core.training.checkpoint import save_model_dir
from unmask.core.errors import InputError

CONFIG = {"task": {"name": "sudoku"}, "backbone": {"name": "transformer"}, "train": {"objective": "mdm"}}


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_sigkilled_checkpoint_write_is_cleaned_by_the_next_write(tmp_path):
    ckpts = tmp_path / "checkpoints"
    code = (
        "import os, signal, torch\n"
        "import unmask.core.training.checkpoint as c\n"
        "c._write_json = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"  # dies mid-write
        f"c.save_model_dir({str(ckpts / 'step-0000010')!r}, {{'w': torch.ones(1000)}}, {CONFIG!r})\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == -9
    left = [e.name for e in ckpts.iterdir()]
    assert len(left) == 1 and left[0].startswith(".step-0000010.tmp-"), left  # what a SIGKILL leaves
    save_model_dir(ckpts / "step-0000020", {"w": torch.ones(3)}, CONFIG)
    assert sorted(e.name for e in ckpts.iterdir()) == ["step-0000020"]


def test_only_dead_writers_temps_are_removed(tmp_path):
    from unmask.core.files import remove_stale_temps

    dead = dead_pid()
    stale = [f".step-0000100.tmp-{dead}-abc123", f".step-0000100.old-{dead}", f".metrics.json.tmp{dead}",
             ".step-0000050.tmp-k2j3h4g5"]  # the last: the older pid-less naming, two hours old
    live = [f".step-0000300.tmp-{os.getppid()}-xyz789", f".curves.tmp{os.getppid()}.png", ".step-0000060.tmp-q1w2e3r4",
            ".hidden", "step-0000100"]
    for name in stale[:2] + [stale[3]] + [live[0], live[2], live[4]]:
        (tmp_path / name).mkdir()
    for name in [stale[2], live[1], live[3]]:
        (tmp_path / name).write_text("x")
    old = time.time() - 7200
    os.utime(tmp_path / stale[3], (old, old))
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(e.name for e in tmp_path.iterdir()) == sorted(live)


def test_report_png_temps_stay_beside_the_target_and_are_removed(tmp_path, monkeypatch):
    from unmask.core import report

    out = tmp_path / "plots"
    out.mkdir()
    (out / f".bars.tmp{dead_pid()}.png").write_text("left by a killed run")
    fig = report._plt().figure()
    report._save(fig, out / "bars.png")
    assert sorted(e.name for e in out.iterdir()) == ["bars.png"]
    # a directory as the target is refused, leaving nothing in its parent
    with pytest.raises(InputError, match="is a directory"):
        report._save(fig, out)
    assert sorted(e.name for e in tmp_path.iterdir()) == ["plots"]
    # a failing write (disk full) leaves no temp file

    def full(path, **kw):  # noqa: ANN001, ANN003, ANN202
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fig, "savefig", full)
    with pytest.raises(OSError):
        report._save(fig, out / "more.png")
    assert sorted(e.name for e in out.iterdir()) == ["bars.png"]


def test_disk_full_during_a_checkpoint_write_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import unmask.core.training.checkpoint as ckpt

    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_json", full)
    with pytest.raises(OSError, match="No space left"):
        save_model_dir(tmp_path / "checkpoints" / "step-0000001", {"w": torch.ones(3)}, CONFIG)
    assert list((tmp_path / "checkpoints").iterdir()) == []
