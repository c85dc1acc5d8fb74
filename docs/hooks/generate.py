"""mkdocs hook: what the docs site takes from the code and from results/ at build time.

- ``reference/cli.md`` is rendered from the argument parser (``unmask.core.cli.build_parser``), so every subcommand,
  including those other packages add through the ``unmask_commands`` entry points, is documented with the flags and
  defaults the installed ``unmask`` really has.
- ``results/`` (the measurements, their tables and plots) is added to the site as ``results/...``, so the pages there
  are read from where the benchmarks write them, never copied.
- ``build/docs-src/unmask/{core,plugins,export}`` link to the source folders, which are the packages ``unmask.core``,
  ``unmask.plugins`` and ``unmask.export`` only through setuptools' ``package-dir`` mapping; mkdocstrings reads the
  API reference from there (``paths`` in mkdocs.yml).

``render_cli`` is also used by ``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "plugins", "export")
RESULTS_SKIP = {"demo.json", "demo.png"}  # written by `make demo`, not part of the repository
WIDTH = "100"  # columns of the usage lines


def link_sources(root: Path = ROOT) -> Path:
    base = root / "build" / "docs-src" / "unmask"
    base.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = base / name
        target = root / name
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return base.parent


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _md(text: str) -> str:
    """Argparse help text as Markdown: ``*`` and ``_`` stay literal, ``<`` is not read as HTML."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")


def _option(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    fmt = parser._get_formatter()
    if action.option_strings:
        if action.nargs == 0:
            names = ", ".join(action.option_strings)
        else:
            metavar = fmt._format_args(action, action.dest.upper())
            names = ", ".join(f"{o} {metavar}" for o in action.option_strings)
    else:
        names = fmt._format_args(action, action.dest)
    text = fmt._expand_help(action) if action.help else ""
    extra = []
    if action.choices is not None and "{" not in names:  # a {a,b} metavar already lists them
        extra.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        extra.append("required")
    default = action.default
    if (
        action.option_strings
        and default not in (None, False, [], argparse.SUPPRESS)
        and action.nargs != 0
        and "default" not in text
    ):
        extra.append(f"default `{default}`")
    line = f"- `{names}`"
    if text:
        line += f": {_md(text)}"
    if extra:
        line += f" ({'; '.join(extra)})"
    return line


def _section(prog: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    out = [f"{'#' * level} {prog}", ""]
    description = parser.description or summary
    if description:
        out += [_md(description), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    groups = [(g.title, g._group_actions) for g in parser._action_groups]
    for title, actions in groups:
        actions = [a for a in actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        out += [f"**{title}**", ""]
        out += [_option(a, parser) for a in actions]
        out.append("")
    for name, help_text, sub in _subcommands(parser):
        out += _section(f"{prog} {name}", help_text, sub, min(level + 1, 6))
    return out


def render_cli() -> str:
    """The CLI reference as Markdown, from the installed ``unmask`` command's parser."""
    from unmask.core.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        subs = _subcommands(parser)
        head = [
            "# CLI reference",
            "",
            "Generated from the argument parser of the installed `unmask` command (`unmask.core.cli.build_parser`) "
            "each time the docs are built; `unmask <command> --help` prints the same. Subcommands that other "
            "packages add through the `unmask_commands` entry points appear here once they are installed.",
            "",
            "| command | what it does |",
            "|---|---|",
        ]
        head += [f"| [`unmask {n}`](#unmask-{n}) | {_md(h)} |" for n, h, _ in subs]
        head.append("")
        body = _section("unmask", "", parser, 2)
        # the top-level section lists the subcommands as sections of their own, one level down
        return "\n".join(head + body) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


@event_priority(100)  # before mkdocstrings' on_config, which resolves its paths
def on_config(config):
    link_sources()
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=render_cli()))
    results = ROOT / "results"
    for p in sorted(results.glob("*")):
        if p.is_file() and p.name not in RESULTS_SKIP and not p.name.startswith("."):
            rel = p.relative_to(ROOT).as_posix()
            files.append(File(rel, src_dir=str(ROOT), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files
