"""README.md and the docs site (docs/, mkdocs.yml, results/ pages): the examples run as written, the front page
keeps its shape, the CLI reference covers every subcommand, and nothing speaks of how the project was built.

Every ```python block of README.md and docs/**/*.md runs in its own subprocess, from an empty temporary directory,
against the installed package (so a path that only exists in the repository fails here as it would for a user).
A block meant as an illustration only has ``<!-- no-test -->`` on the line before its fence.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->"
FENCE = re.compile(r"^```(\w*)\s*$")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def code_blocks(path: Path) -> list[tuple[int, str, str, bool]]:
    """(line, language, code, marked no-test) of every fenced block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        marked = any(lines[j].strip() == NO_TEST for j in range(max(0, start - 2), start))
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        out.append((start + 1, lang, "\n".join(lines[i + 1 : j]) + "\n", marked))
        i = j + 1
    return out


def python_blocks() -> list[tuple[str, str, bool]]:
    out = []
    for path in markdown_files():
        for line, lang, code, marked in code_blocks(path):
            if lang == "python":
                out.append((f"{path.relative_to(ROOT)}:{line}", code, marked))
    return out


BLOCKS = python_blocks()


@pytest.mark.parametrize(("where", "code"), [(w, c) for w, c, marked in BLOCKS if not marked],
                         ids=[w for w, _, marked in BLOCKS if not marked])
def test_python_block_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNMASK_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{where} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"


def test_examples_are_mostly_tested() -> None:
    """Illustration-only blocks stay rare: at most one in five Python blocks."""
    assert BLOCKS, "no python blocks found"
    marked = [w for w, _, m in BLOCKS if m]
    assert len(marked) * 5 <= len(BLOCKS), f"too many blocks marked {NO_TEST}: {marked}"


def test_readme_starts_with_the_two_commands() -> None:
    """CI runs `make test`; the README's first commands are `make demo` and `make test`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = code_blocks(ROOT / "README.md")[0]
    commands = [ln.split("#")[0].strip() for ln in first[2].splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    assert len(text.encode()) < 14_000, "README is the front page; details belong in docs/"


def test_readme_headline_table() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [ln for ln in text.splitlines() if ln.startswith("| test (") or ln.startswith("| hard (")]
    assert len(rows) == 2
    assert "**94.6%**" in rows[0] and "89.49" in rows[0]
    assert "61.8%" in rows[1] and "49.88" in rows[1]


def test_local_links_exist() -> None:
    """Relative links of README.md and results/*.md point at files of the repository (mkdocs checks docs/)."""
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    bad = []
    for path in [ROOT / "README.md", *sorted((ROOT / "results").glob("*.md"))]:
        for target in link.findall(path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)}: {target}")
    assert not bad, bad


# How or in which round of work something was built is not documentation (the git history keeps it). A bracketed
# letter in each word keeps the words themselves off this line, which the test also reads.
HISTORY = re.compile(r"\b(s[e]ssion|i[s]sue)s?\s+\d+|\bthis\s+s[e]ssion\b|\bh[e]lper\s+\d+", re.IGNORECASE)


def test_no_build_history_in_docs_or_code() -> None:
    paths = [ROOT / "README.md", ROOT / "mkdocs.yml", *DOCS.rglob("*.md"), *(ROOT / "configs").rglob("*.toml"),
             *(ROOT / "results").glob("*.md"), *(ROOT / "results").glob("*.txt")]
    for folder in ("core", "plugins", "export", "tools", "bench", "tests", "package", "examples"):
        paths += [p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hooks_generate", DOCS / "hooks" / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_covers_every_subcommand() -> None:
    pytest.importorskip("mkdocs")
    from unmask.core.cli import build_parser

    text = _hook().render_cli()
    parser = build_parser()
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    for name, sub in subs.choices.items():
        assert f"\n### unmask {name}\n" in text, name
        for action in sub._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}" in text, f"unmask {name} {opt}"
