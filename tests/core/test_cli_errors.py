"""User mistakes on the command line end in one ``error:`` line and exit status 2, before any work."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import run

ROOT = Path(__file__).parents[2]
MODEL = ROOT / "models" / "sudoku-default"
CONFIG = ROOT / "configs" / "sudoku-default.toml"
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def one_error(capsys: pytest.CaptureFixture[str], *args: str, needles: tuple[str, ...] = ()) -> str:
    """:func:`cli_helpers.one_error`, returning stdout (the tests below read what was printed before the error)."""
    code, out, err = run(capsys, *args)
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]  # (progress bars also go to stderr)
    assert code == 2, (out, err)
    assert len(lines) == 1 and err.strip().endswith(lines[0]) and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return out


@pytest.fixture()
def not_a_dir(tmp_path: Path) -> Path:
    """A regular file: any path below it cannot be written (also for root, unlike permission bits)."""
    f = tmp_path / "file"
    f.write_text("x")
    return f


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("model") / "m"
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(MODEL / name, dst / name)
    return dst


EVAL = ("eval", "--model", str(MODEL), "--strategies", "margin")


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--generate", "10", "--batch-size", "0"), "argument --batch-size: expected a positive integer, got '0'"),
        (("--generate", "10", "--batch-size", "-1"), "argument --batch-size: expected a positive integer, got '-1'"),
        (("--generate", "0"), "argument --generate: expected a positive integer, got '0'"),
        (("--generate", "4", "--micro-batch", "-1"), "argument --micro-batch: expected an integer >= 0, got '-1'"),
        (("--generate", "4", "--micro-batch", "x"), "argument --micro-batch: expected an integer >= 0, got 'x'"),
        (("--generate", "-5"), "argument --generate: expected a positive integer, got '-5'"),
        (("--generate", "3", "--steps", "0"), "argument --steps"),
        (("--generate", "3", "--threads", "0"), "argument --threads"),
        (("--generate", "x"), "argument --generate: expected a positive integer, got 'x'"),
        (("--generate", "3", "--bogus"), "unrecognized arguments: --bogus"),
    ],
)
def test_bad_numbers_and_flags(capsys, args, needle):
    one_error(capsys, *EVAL, *args, needles=(needle,))


def test_unwritable_outputs_are_refused_before_work(capsys, not_a_dir, tmp_path):
    data = tmp_path / "p.txt"
    data.write_text(PUZZLE + "\n")
    # nothing is printed before the error: no examples were read or decoded
    out = one_error(capsys, *EVAL, "--data", str(data), "--json", str(not_a_dir / "r.json"), needles=("--json",))
    assert out == ""
    out = one_error(capsys, *EVAL, "--data", str(data), "--json", str(tmp_path), needles=("is a directory",))
    assert out == ""
    out = one_error(capsys, "solve", "--model", str(MODEL), "--order-png", str(not_a_dir / "o.png"), PUZZLE,
                    needles=("--order-png", "is a file, not a directory"))
    assert out == ""
    one_error(capsys, "export", "--model", str(MODEL), "--onnx", str(not_a_dir / "m.onnx"), needles=("--onnx",))
    one_error(capsys, "train", "--config", str(CONFIG), "--set", f'out="{not_a_dir / "run"}"',
              needles=("out (the run directory)", "is a file, not a directory"))


def test_unwritable_cache_dir_is_refused_before_generating(not_a_dir):
    from unmask.core.errors import InputError
    from unmask.core.task import build_task

    task = build_task({"name": "sudoku", "cache_dir": str(not_a_dir / "cache")})
    with pytest.raises(InputError, match=r"task.cache_dir .* is a file, not a directory"):
        task.generate("test", 1, 0)


def test_disk_full_at_report_time(capsys, monkeypatch, tmp_path):
    import unmask.core.report as report

    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.json"))

    monkeypatch.setattr(report, "write_report", full)
    data = tmp_path / "p.txt"
    data.write_text(PUZZLE + "\n")
    one_error(capsys, *EVAL, "--data", str(data), "--steps", "5", "--json", str(tmp_path / "r.json"),
              needles=("No space left on device: ", "r.json'; free some disk space"))


def test_non_utf8_files_name_the_line(capsys, tmp_path, model_copy):
    toml = tmp_path / "c.toml"
    toml.write_bytes(CONFIG.read_bytes() + "# caf\xe9\n".encode("latin-1"))
    n = toml.read_bytes().count(b"\n")
    one_error(capsys, "train", "--config", str(toml), needles=(f"line {n} is not UTF-8", "0xe9"))

    bad = tmp_path / "m"
    shutil.copytree(model_copy, bad)
    cfg = (bad / "config.json").read_text()
    (bad / "config.json").write_bytes(cfg.replace('"sudoku"', '"sudok\xe9"', 1).encode("latin-1"))
    one_error(capsys, "eval", "--model", str(bad), "--generate", "2", needles=("config.json", "is not UTF-8"))

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(b'{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5, "note": "\xe9"}\n')
    one_error(capsys, "curves", str(metrics), "--out", str(tmp_path / "c.png"), needles=("line 2 is not UTF-8",))


@pytest.mark.parametrize("section, value", [("task", 5), ("backbone", "transformer"), ("train", [1])])
def test_wrong_typed_config_sections(capsys, tmp_path, model_copy, section, value):
    bad = tmp_path / "m"
    shutil.copytree(model_copy, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg[section] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    one_error(capsys, "solve", "--model", str(bad), PUZZLE, needles=(f"section '{section}' is a", "not a table"))


def test_data_files_bom_accepted_latin1_named(capsys, tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeff# puzzles\n".encode("utf-8") + PUZZLE.encode() + b"\n")
    code, out, err = run(capsys, *EVAL, "--data", str(bom), "--steps", "10")
    assert code == 0, err
    assert "1 examples" in out
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"# ok\n" + PUZZLE.encode() + b"\n# d\xe9j\xe0 vu\n")
    one_error(capsys, *EVAL, "--data", str(latin), needles=("latin.txt' line 3 is not UTF-8",))


def test_failing_third_party_strategy_is_one_line_naming_it():
    from fakes import context_engine

    from unmask.core.decoding.loop import decode
    from unmask.core.errors import PluginError
    from unmask.core.strategy import Strategy

    class Broken(Strategy):
        name = "broken"

        def step(self, x):  # noqa: ANN001, ANN201
            raise ZeroDivisionError("oops")

    with pytest.raises(PluginError, match=r"strategy 'broken' \(package 'tests'\) failed: "
                                          r"ZeroDivisionError: oops"):
        decode(context_engine(3, 4), torch.full((1, 4), 3), torch.zeros(1, 4, dtype=torch.bool), Broken(),
               mask_id=3, generator=torch.Generator())


@pytest.mark.parametrize("sets, needle", [
    (("backbone.d_model=16384", "backbone.n_layers=64"), "reduce backbone.d_model or backbone.n_layers"),
    (("train.batch_size=1000000000",), "train.batch_size = 1,000,000,000"),
])
def test_absurd_sizes_are_refused_before_allocating(capsys, tmp_path, sets, needle):
    args = ["train", "--config", str(CONFIG), "--set", f'out="{tmp_path / "run"}"']
    for s in sets:
        args += ["--set", s]
    one_error(capsys, *args, needles=(needle, "GiB is available"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_absurd_generate_is_refused(capsys):
    one_error(capsys, *EVAL, "--generate", "100000000000", needles=("--generate 100,000,000,000", "GiB"))


def test_memory_check_uses_the_available_memory():
    from unmask.core.errors import ConfigError
    from unmask.core.memory import check_fits, check_training_fits
    from unmask.core.task import build_task

    check_fits(2**30, "x", "y", available=2**31)
    with pytest.raises(ConfigError, match="x needs at least 2.0 GiB of memory but 1.0 GiB is available; y"):
        check_fits(2**31, "x", "y", available=2**30)
    task = build_task({"name": "sudoku"})
    check_training_fits(task, {"name": "transformer"}, 128, available=2**30)  # ~5M parameters: ~80 MB
    with pytest.raises(ConfigError, match=r"backbone with [0-9,]+ parameters .* reduce backbone.d_model"):
        check_training_fits(task, {"name": "transformer"}, 128, available=2**20)


def test_misbehaving_third_party_plugin_is_one_line_naming_it_and_its_package(capsys, tmp_path, monkeypatch):
    import textwrap

    from unmask.core.registry import strategies

    site = tmp_path / "site"
    (site / "boom_pkg").mkdir(parents=True)
    (site / "boom_pkg" / "__init__.py").write_text("")
    (site / "boom_pkg" / "strat.py").write_text(textwrap.dedent('''
        from unmask.core.strategy import ScoreStrategy

        class Boom(ScoreStrategy):
            """Fails when built."""
            def __init__(self, options=None):
                raise RuntimeError("kaboom")
    '''))
    dist = site / "boom_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: boom-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[unmask_strategies]\nboom = boom_pkg.strat:Boom\n")
    monkeypatch.syspath_prepend(str(site))
    strategies.reset()
    try:
        one_error(capsys, "solve", "--model", str(MODEL), "--strategy", "boom", PUZZLE,
                  needles=("error: strategy 'boom' (package 'boom-pkg') failed: RuntimeError: kaboom",))
    finally:
        monkeypatch.undo()
        strategies.reset()
