"""The house rules of core/ (README "Architecture"): the framework imports no plugin and no exporter, names no
task in code, and every module says in its first line what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "core").rglob("*.py"))


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_core_imports_no_plugin_and_no_exporter():
    bad = {str(p.relative_to(ROOT)): m for p in CORE for m in _imports(p)
           if m.startswith(("unmask.plugins", "unmask.export"))}
    assert not bad, f"core/ must reach plugins through the registries: {bad}"


def test_core_code_names_no_task():
    """Task names may appear in docstrings and comments (citing the paper), never in code: string constants that
    are not docstrings, names, attributes."""
    words = ("sudoku", "zebra", "lo_nae_sat")
    hits = []
    for p in CORE:
        tree = ast.parse(p.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        docs |= {id(n.value) for n in ast.walk(tree)  # attribute docstrings: a bare string after an assignment
                 if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
        for n in ast.walk(tree):
            text = None
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
                text = n.value
            elif isinstance(n, ast.Name):
                text = n.id
            elif isinstance(n, ast.Attribute):
                text = n.attr
            if text and any(w in text.lower() for w in words):
                hits.append(f"{p.relative_to(ROOT)}:{getattr(n, 'lineno', '?')}: {text[:60]!r}")
    assert not hits, hits


def test_every_core_module_says_what_it_is_for():
    for p in CORE:
        doc = ast.get_docstring(ast.parse(p.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, f"{p.relative_to(ROOT)}: no first line saying what it is for"
