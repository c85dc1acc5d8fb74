"""The ``unmask`` command line: list, train, curves, eval, solve, serve, experiment, export.

Every user mistake ends as one line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn, cast

from unmask.core.errors import InputError, UnmaskError

KINDS = ("tasks", "backbones", "strategies", "runtimes", "objectives")


def _warning_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {message}", file=sys.stderr)


class _Help(argparse.HelpFormatter):
    """Help text with each option's default (unless the help already says it, or there is none to say)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" in text or not action.option_strings or d is None or d is False or d == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


EXIT_CODES = "exit status: 0 done; 1 solve found no valid solution; 2 a user error (one 'error:' line); 130 interrupted"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line ``error: ...`` and exit status 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


class _LazyParser(_Parser):
    """A subcommand parser that adds the rest of its arguments (``more``) only when the subcommand is used:
    ``unmask serve``'s options live in ``unmask.core.serve``, which imports torch, and ``unmask --help`` (or any
    other command) must not pay for that."""

    more: Any = None

    def _complete(self) -> None:
        more, self.more = self.more, None
        if more is not None:
            more(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:  # the docs' CLI reference starts each command with it, then lists the options
        self._complete()
        return super().format_usage()


def _serve_arguments(s: argparse.ArgumentParser) -> None:
    from unmask.core.serve import add_arguments

    add_arguments(s)


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _scale(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _retry_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--retries", type=_count, default=0, metavar="N",
                   help="decode an answer that breaks the puzzle's rules again, up to N more times, with noise on "
                   "the scores; every attempt's passes count in NFE (default 0)")
    s.add_argument("--retry-noise", type=_scale, default=0.1, metavar="S",
                   help="Gumbel noise scale of the retries (default 0.1)")


SEED_MAX = 2**63 - 1


def _seed(text: str) -> int:
    """An argparse type: a seed, an integer in 0 .. 2**63 - 1 (what numpy's and torch's generators take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{SEED_MAX} (2**63 - 1), got {text!r}")
    return value


def _path(text: str) -> str:
    """An argparse type: a path, never empty (an empty --json or --model is a mistake, not 'no file')."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def _image(text: str) -> str:
    """An argparse type: a path whose suffix is an image type the plots can be written as (.png, .pdf, .svg...)."""
    from unmask.core.files import IMAGE_SUFFIXES

    _path(text)
    suffix = Path(text).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        what = f"'{suffix}' is not an image type" if suffix else "the name has no image type"
        raise argparse.ArgumentTypeError(f"{what}; end it in .png (or {', '.join(IMAGE_SUFFIXES[1:])}), got {text!r}")
    return text


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars: unless --no-progress, and only on a terminal (redirected output gets no bar lines)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _model_input(model: str | None) -> str:
    """The path ``--model`` reads (a path, a model name, or the packaged default model without it), for the output
    checks; '' if unknown."""
    from unmask.core.resources import find_model

    try:
        return str(find_model(model))
    except UnmaskError:
        return model or ""  # opening the model says what is missing


def _model_inputs(model: str | None) -> list[tuple[str, str]]:
    """``("--model", path)`` and, for a file (a TensorRT plan), its JSON sidecar ``X.json`` beside it."""
    path = _model_input(model)
    if not path:
        return []
    out = [("--model", path)]
    if Path(path).is_file():
        out.append(("--model (its sidecar)", f"{path}.json"))
    return out


# -- list -----------------------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from unmask.core.registry import registries

    kinds = [args.kind] if args.kind else [*KINDS, "models"]
    status = 0
    for kind in kinds:
        if kind == "models":
            status = max(status, _list_models(len(kinds) > 1))
            continue
        reg = registries[kind]
        infos = reg.info()
        if len(kinds) > 1:
            print(f"{kind}:")
        width = max([len(i.name) for i in infos] + [4])
        for i in infos:
            print(f"  {i.name:<{width}}  {i.description}  [{i.package}]")
        for msg in reg.collisions():
            print(f"error: {msg}", file=sys.stderr)
            status = 2
    return status


def _list_models(heading: bool) -> int:
    """``unmask list models``: every model name ``--model`` takes (packaged, and from ``unmask_models`` entry
    points), with what it is and its package."""
    import json

    from unmask.core.resources import default_model_name, model_entries

    entries, collisions = model_entries()
    try:
        default = default_model_name()
    except UnmaskError:
        default = ""
    if heading:
        print("models:")
    width = max([len(n) for n in entries] + [4])
    for name, e in entries.items():
        what = e.source
        if e.path is not None:
            try:
                cfg = json.loads((e.path / "config.json").read_text(encoding="utf-8"))
                train = cfg.get("train") or {}
                objective = train.get("objective", "mdm") + (f", {train['order']} order"
                                                              if train.get("objective") == "arm" and train.get("order")
                                                              else "")
                samples = cfg.get("samples")  # counted across warm starts (steps restart with each stage)
                trained = f", trained on {samples:,} examples" if isinstance(samples, int) else ""
                what = (f"task {cfg['task']['name']}, {objective}{trained}"
                        + (" (the default model)" if name == default else ""))
            except (OSError, ValueError, KeyError, TypeError, RecursionError):
                what = "unreadable config.json"
        print(f"  {name:<{width}}  {what}  [{e.package}]")
    for msg in collisions:
        print(f"error: {msg}", file=sys.stderr)
    return 2 if collisions else 0


# -- train ----------------------------------------------------------------------------------------------------------
def _train_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(config file, overrides): a packaged config named by ``--config NAME`` puts its run and data cache under
    unmask's home (``$UNMASK_HOME`` or the user cache), not the current directory; ``--out`` and ``--set`` win."""
    from unmask.core.config import load_toml
    from unmask.core.resources import find_config, home

    path, packaged = find_config(args.config)
    sets: list[str] = []
    if packaged:
        raw = load_toml(path)
        out = Path(str(raw.get("out", "runs/default")))
        if not out.is_absolute():
            sets.append(f'out="{home() / "runs" / out.name}"')
        cache = (raw.get("task") or {}).get("cache_dir", "data/cache")
        if cache and not Path(str(cache)).is_absolute():
            sets.append(f'task.cache_dir="{home() / "cache"}"')
    if args.out:
        sets.append(f'out="{args.out}"')
    return str(path), [*sets, *args.set]


def cmd_train(args: argparse.Namespace) -> int:
    from unmask.core.distributed import is_main
    from unmask.core.training.trainer import resolve_config, train

    args.config, args.set = _train_overrides(args)
    if is_main():
        print(f"run directory: {resolve_config(args.config, args.set).out.absolute()}")

    if args.resume and is_main():
        from unmask.core.training.checkpoint import latest_checkpoint
        from unmask.core.training.trainer import resolve_config

        latest = latest_checkpoint(resolve_config(args.config, args.set).out)
        if latest is not None:
            step = int(latest.name.rsplit("-", 1)[-1]) if latest.name.rsplit("-", 1)[-1].isdigit() else "?"
            print(f"resuming from step {step} ({latest})")
    final = train(args.config, args.set, resume=args.resume, progress=_progress(args))
    if is_main():  # under torchrun only rank 0 reports
        print(f"model written to {final}")
    return 0


# -- curves ---------------------------------------------------------------------------------------------------------
def _labelled_runs(specs: list[str]) -> dict[str, str]:
    """``PATH`` or ``LABEL=PATH`` -> {label: path}; a bare path is labelled by its run directory's name."""
    runs: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep and _named_model(spec):  # a model name: labelled by it
            label, path = spec, _named_model(spec)
        elif not sep:
            p = Path(spec).resolve()
            path = spec
            label = (p.parent if p.name in ("model", "metrics.jsonl") else p).name
            if p.name == "metrics.jsonl" and p.parent.name == "model":
                label = p.parent.parent.name
        elif path and _named_model(path):
            path = _named_model(path)
        if not label or not path:
            raise InputError(f"run {spec!r}: give PATH or LABEL=PATH, e.g. relation=runs/with-relations")
        if label in runs:
            raise InputError(f"two runs are labelled {label!r}; name them with LABEL=PATH")
        runs[label] = path
    return runs


def _named_model(spec: str) -> str:
    """The directory of the model named ``spec`` when ``spec`` is no existing path but a model name; else ''."""
    from unmask.core.resources import find_model

    if not spec.strip() or Path(spec).exists():
        return ""
    try:
        return str(find_model(spec))
    except UnmaskError:
        return ""


def cmd_curves(args: argparse.Namespace) -> int:
    from unmask.core.files import check_outputs
    from unmask.core.report import curves_table, metrics_file, reach_table, training_curves

    runs = _labelled_runs(args.runs)
    check_outputs([("--out", args.out)], [(f"run '{label}'", metrics_file(path)) for label, path in runs.items()])
    named = len(runs) == 1 and bool(_named_model(args.runs[0]))  # one model by name: the table names it so
    if len(runs) == 1:
        runs = {"": next(iter(runs.values()))}
    print(curves_table({args.runs[0]: runs[""]} if named else runs))
    reach = reach_table(runs, args.x)  # several runs: the training each needed for the same validation score
    if reach:
        print(reach)
    try:
        training_curves(Path(args.out), runs, x=args.x, title=args.title or "")
    except OSError as exc:
        raise InputError(f"cannot write {args.out}: {exc.strerror or exc}; choose another --out path") from None
    print(f"curves written to {args.out}")
    return 0


# -- eval -----------------------------------------------------------------------------------------------------------
def _engine_and_task(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from unmask.core.decoding.runtime import open_engine, runtime_for_path
    from unmask.core.errors import CheckpointError
    from unmask.core.registry import runtimes
    from unmask.core.resources import find_model, model_label

    path = str(find_model(args.model))  # a path as given, a model name, or the packaged default model
    args.model = model_label(args.model)  # reports name the model as the user did
    runtime = args.runtime or runtime_for_path(path)
    fields = set(getattr(getattr(runtimes.get(runtime), "Options", None), "__struct_fields__", ()))
    opts: dict[str, Any] = {}
    typed = {"device": args.device, "bf16": getattr(args, "bf16", False) or None,
             "compile": getattr(args, "compile", False) or None, "threads": getattr(args, "threads", None),
             "micro_batch": getattr(args, "micro_batch", None),
             "model": ["backbone.trust_remote_code=true"] if getattr(args, "trust_remote_code", False) else None}
    for key, value in typed.items():
        if value is None:
            continue
        if key not in fields:  # name the flag the user typed, not the runtime's config path
            hint = {"bf16": "; export with --precision bf16 for onnxruntime/TensorRT",
                    "compile": "; onnxruntime and TensorRT compile the graph themselves"}.get(key, "")
            flag = key.replace("_", "-")
            raise InputError(f"--{flag} does not apply to runtime '{runtime}' (model '{args.model}'){hint}")
        opts[key] = value
    if "threads" in fields and "threads" not in opts:
        opts["threads"] = default_threads(getattr(args, "command", ""))
    try:
        engine = open_engine(path, runtime, **opts)
    except RecursionError:  # a JSON config or metadata nested thousands deep (json raises this, not a JSONDecodeError)
        raise CheckpointError(f"model '{args.model}': its config nests tables or arrays too deeply to read; the "
                              "model is damaged: copy or export it again") from None
    from unmask.core.resources import engine_task

    task = engine_task(engine, path)
    want = getattr(args, "task", None)
    if want and want != task.name:
        raise InputError(f"model '{args.model}' was trained for task '{task.name}', not '{want}'")
    return engine, task, runtime


def strategy_section(spec: str | dict[str, Any], what: str = "--strategy") -> dict[str, Any]:
    """One strategy as a config section: ``"NAME[:KEY=VALUE...]"`` (as ``--strategies`` writes one) or a table
    ``{"name": ..., **options}``; ``what`` names the source in errors."""
    from unmask.core.config import apply_overrides

    if isinstance(spec, dict):
        if not isinstance(spec.get("name"), str):
            raise InputError(f'{what} as a table needs a "name", e.g. {{"name": "margin"}}')
        return dict(spec)
    specs = strategy_specs(spec)
    if len(specs) != 1:
        raise InputError(f"{what} takes one strategy, got {len(specs)}: {spec!r}")
    name, own = specs[0]
    return {"name": name, **apply_overrides({}, [f"s.{o}" for o in own]).get("s", {})}


def strategy_specs(text: str) -> list[tuple[str, list[str]]]:
    """``--strategies`` parsed: ``margin,confidence_threshold:tau=0.99,factor:f=0.1:score=margin`` ->
    [(name, ["key=value", ...]), ...]. Options follow a name after ``:`` (several joined by ``:``); a comma-separated
    piece with ``=`` and no name (``factor:f=0.1,score=margin``) continues the previous strategy's options."""
    specs: list[tuple[str, list[str]]] = []
    for piece in [p.strip() for p in text.split(",") if p.strip()]:
        head, _, rest = piece.partition(":")
        if "=" in head:  # an option of the previous strategy
            if not specs:
                raise InputError(f"--strategies {text!r}: option {piece!r} comes before any strategy name; write "
                                 "NAME:KEY=VALUE, e.g. confidence_threshold:tau=0.99")
            specs[-1][1].append(piece)
            continue
        opts = [o.strip() for o in rest.split(":") if o.strip()] if rest else []
        bad = [o for o in opts if "=" not in o]
        if bad:
            raise InputError(f"--strategies: '{head}' option {bad[0]!r} is not KEY=VALUE, e.g. {head}:steps=20")
        specs.append((head.strip(), opts))
    return specs


def default_threads(command: str) -> int:
    """CPU threads when --threads is not given: 1 for ``solve`` (one puzzle gains nothing from more), else the cores
    not already busy (1-minute load average), so a busy machine is not oversubscribed (measured on 2 cores with one
    busy: solve 13.4 s with torch's default of all cores vs 3.0 s with one)."""
    import os

    if command == "solve":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without a load average
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _decoders(engine: Any, task: Any, names: str, steps: int | None, opts: list[str] | None) -> list[Any]:
    """What the model decodes ``--strategies`` with (its objective says: decode-loop strategies for an MDM), with
    ``--steps`` and ``--opt`` (for all; a per-strategy option wins over both). Options that cannot change anything
    are warned about, one line each."""
    from unmask.core.config import apply_overrides
    from unmask.core.objective import model_objective
    from unmask.core.registry import strategies

    extra = apply_overrides({}, [f"s.{o}" for o in (opts or [])]).get("s", {})
    sections = []
    for name, own in strategy_specs(names):
        section = {"name": name, **extra}
        if steps is not None:
            section["steps"] = steps
        mine = apply_overrides({}, [f"s.{o}" for o in own]).get("s", {})
        section.update(mine)
        try:  # an option the strategy does not have: name the flag it came from (not an internal config path)
            fields = getattr(strategies.get(name), "Options", None) if name in strategies else None
            allowed = set(getattr(fields, "__struct_fields__", ()))
        except UnmaskError:
            allowed = set()  # a broken strategy plugin: building it says so below
        for key in (sorted(set(section) - allowed - {"name"}) if allowed else []):
            flag = f"--strategies {name}:{key}=..." if key in mine else f"--opt {key}=..."
            raise InputError(f"{flag}: strategy '{name}' has no option '{key}'; its options: "
                             f"{', '.join(sorted(allowed))}")
        sections.append(section)
    if not sections:
        raise InputError("--strategies is empty; name at least one, e.g. --strategies margin")
    objective = model_objective(task, engine.config)
    out = [d for s in sections for d in objective.decoders([s], where=f"--strategies {s['name']}")]
    for d in out:
        for msg in getattr(d, "ineffective_options", list)():
            warnings.warn(f"strategy {d.name}: {msg}", stacklevel=1)
    return out


def serve_strategy(engine: Any, task: Any, names: str, steps: int | None, opts: list[str] | None,
                   command: str) -> Any:
    """The one decode-loop strategy of ``unmask serve`` (its scheduler steps rows of the decode loop), built from the
    command's flags; ``bench/serve.py`` builds its strategy here too, so both run the same one."""
    from unmask.core.objective import objective_name
    from unmask.core.strategy import Strategy

    decoder = _decoders(engine, task, names, steps, opts)[0]
    if not isinstance(decoder, Strategy):
        raise InputError(f"unmask {command} steps the decode loop's strategies; '{decoder.name}' (the decoder of "
                         f"train.objective = '{objective_name(engine.config)}') is not one")
    return decoder


def cmd_eval(args: argparse.Namespace) -> int:
    from unmask.core import distributed
    from unmask.core.files import check_outputs, check_writable

    if args.json:  # before any work, so a typo costs no evaluation (the bar chart and heat maps go beside it)
        check_writable(args.json, "--json")
    elif args.trace:
        check_writable(Path("order.png"), "--trace (heat maps go to the current directory without --json)")
    outputs: list[tuple[str, str | Path]] = []
    if args.json:
        outputs += [("--json", args.json), ("--json (its bar chart)", _report_png(args.json))]
    check_outputs(outputs, [*_model_inputs(args.model), *([("--data", args.data)] if args.data else [])])
    distributed.setup(args.device)  # under torchrun: each rank decodes a shard, rank 0 reports
    code = _eval_ranks(args, distributed)
    # Every rank leaves the group together, after rank 0 has written its report: a rank that exits with the group
    # still up can abort in gloo's teardown ("terminate called without an active exception"), and torchrun then
    # kills rank 0 before it has written the results. Not on an error: another rank may be inside a collective,
    # and torchrun stops the others when one fails.
    distributed.cleanup()
    return code


def _heat_map(json_path: str | None, label: str) -> Path:
    """Where ``unmask eval --trace`` draws the commit order of the strategy labelled ``label``: beside --json, else
    here (``r-order-confidence_threshold-tau=0.99.png``)."""
    from unmask.core.evaluate import label_file_part

    part = label_file_part(label)
    if json_path:
        return Path(json_path).with_name(f"{Path(json_path).stem}-order-{part}.png")
    return Path(f"order-{part}.png")


def _labels(spec: str, decoders: list[Any]) -> list[str]:
    """The row label of each decoder of ``--strategies``: its name and the options of its own spec that differ from
    its defaults (``confidence_threshold:tau=0.99``); options given to all with --steps / --opt are left out."""
    from unmask.core.evaluate import strategy_label, unique_labels

    own = [[o.partition("=")[0].strip() for o in opts] for _, opts in strategy_specs(spec)]
    if len(own) != len(decoders):  # an objective that expands a spec into several decoders: label them in full
        return unique_labels(strategy_label(d) for d in decoders)
    return unique_labels(strategy_label(d, keys) for d, keys in zip(decoders, own, strict=True))


def _report_png(json_path: str | Path) -> Path:
    """The bar chart ``unmask eval --json X`` writes beside X (``report.write_report``'s name for it)."""
    return Path(json_path).with_suffix(".png")


def _eval_ranks(args: argparse.Namespace, distributed: Any) -> int:
    from unmask.core.report import eval_report, format_table, order_heatmap, write_report

    main = distributed.is_main()
    from unmask.core.files import check_outputs

    engine, task, runtime = _engine_and_task(args)
    strategies = _decoders(engine, task, args.strategies, args.steps, args.opt)
    labels = _labels(args.strategies, strategies)
    if args.trace:  # the heat maps' names come from the labels: checked before any decoding
        outputs: list[tuple[str, str | Path]] = []
        if args.json:
            outputs += [("--json", args.json), ("--json (its bar chart)", _report_png(args.json))]
        outputs += [(f"--trace (the heat map of {label})", _heat_map(args.json, label)) for label in labels]
        check_outputs(outputs, [*_model_inputs(args.model), *([("--data", args.data)] if args.data else [])])
    if args.data:
        data = task.read_file(args.data)
        source = args.data
    else:
        from unmask.core.memory import check_fits

        check_fits(32.0 * args.generate * task.seq_len, f"--generate {args.generate:,}", "generate fewer examples")
        data = task.generate(args.split, args.generate, args.seed, progress=main and _progress(args))
        source = f"generated {args.split} split, seed {args.seed}"
    if main:
        print(f"{task.name}: {len(data)} examples ({source}); model {args.model}; runtime {runtime}")
    results = []
    for s, label in zip(strategies, labels, strict=True):
        r = distributed.sharded_evaluate(engine, task, data, s, batch_size=args.batch_size, seed=args.seed,
                                         device=engine.device, trace=args.trace, progress=main and _progress(args),
                                         scheduler=args.scheduler, retries=args.retries,
                                         retry_noise=args.retry_noise)
        if r is None:  # not rank 0
            continue
        r.strategy = label  # tables, JSON, the bar chart and heat-map names tell options apart
        if args.retries and "retries" in r.options:
            r.strategy = f"{label} +{args.retries} retries"
        results.append(r)
    if not main:
        return 0
    traced = [r for r in results if args.trace and r.order is not None and task.board_shape()]
    vmax = max((float(r.order.max()) for r in traced), default=None)  # one colour scale for every strategy
    for r in traced:
        png = _heat_map(args.json, r.strategy)
        order_heatmap(png, r.order, data.given, task.board_shape(), f"{task.name}, {r.strategy}: mean commit step",
                      vmax=vmax)
        print(f"commit-order heat map: {png}")
    print(format_table(results))
    if args.json:
        report = eval_report(task, str(args.model), runtime, data, results,
                             {"source": source, "scheduler": args.scheduler, "batch_size": args.batch_size,
                              "world_size": distributed.rank_world()[1]})
        if args.data:  # a user's own examples: say how each one went and what was decoded, in file order
            from unmask.core.api import answer_text

            for entry, r in zip(report["results"], results, strict=True):
                solved = r.per_example.get("solved", [])
                pred = r.predictions
                entry["examples"] = [{"solved": bool(float(v) >= 1.0), "nfe": int(n),
                                      **({"answer": answer_text(task, pred[i], data.given[i])}
                                         if pred is not None else {})}
                                     for i, (v, n) in enumerate(zip(solved, r.per_example.get("nfe", []),
                                                                    strict=False))]
        png = write_report(args.json, report)
        print(f"results: {args.json}; plot: {png}")
    return 0


# -- solve ----------------------------------------------------------------------------------------------------------
def cmd_solve(args: argparse.Namespace) -> int:
    import numpy as np

    from unmask.core.evaluate import evaluate_with
    from unmask.core.files import check_outputs, check_writable

    source = None if args.puzzle == "-" else Path(args.puzzle) if Path(args.puzzle).is_file() else None
    outputs = [(flag, path) for flag, path in (("--order-png", args.order_png), ("--out", args.out)) if path]
    for flag, path in outputs:  # before any work
        check_writable(path, flag)
    check_outputs(outputs, [*_model_inputs(args.model), *([("the puzzle file", source)] if source else [])])
    if source is not None:
        from unmask.core.files import read_text

        text = read_text(source, "puzzle file")
    else:
        text = sys.stdin.read() if args.puzzle == "-" else args.puzzle
    engine, task, runtime = _engine_and_task(args)
    data = _solve_data(task, text, source, args.puzzle == "-")
    strategy = _decoders(engine, task, args.strategy, args.steps, args.opt)[0]
    if len(data) > 1 or args.out:
        return _solve_many(args, task, data, engine, strategy, "stdin" if args.puzzle == "-" else args.puzzle)
    res = evaluate_with(engine, task, data, strategy, batch_size=1, seed=args.seed, device=engine.device, trace=True,
                        retries=args.retries, retry_noise=args.retry_noise)
    pred = res.predictions
    assert pred is not None  # evaluate_with keeps the predictions
    print(task.format(pred[0]))
    scores = res.per_example
    unique = bool(data.meta.get("unique", np.array([True]))[0])
    valid = not bool(scores.get("invalid", np.array([False]))[0])
    solved = np.asarray(scores["solved"])
    ok = bool(solved[0] >= 1.0) if solved.dtype.kind == "f" else bool(solved[0])  # a fraction counts when whole
    status = "solved" if ok else ("valid grid but not the unique solution" if valid else "NOT solved (invalid grid)")
    tries = int(scores["attempts"][0]) if "attempts" in scores else 1
    print(f"{status}; {int(scores['nfe'][0])} forward passes" + (f" in {tries} decodes" if tries > 1 else "")
          + f"; strategy {_labels(args.strategy, [strategy])[0]}")
    if not ok and not valid:
        for line in task.explain(pred[0], data):
            print(line)
    if not unique:
        print("note: this puzzle has more than one solution")
    assert res.order is not None  # decoded with trace=True
    order = np.asarray(res.order)[0]
    shape = task.board_shape()
    if args.order_png:
        from unmask.core.report import order_heatmap

        if shape is None:
            raise InputError(f"task '{task.name}' has no board to plot; use --show-order to print the order")
        cells = task.format_cells(pred[0])
        order_heatmap(Path(args.order_png), order[None], data.given, shape, "commit order (grey: given)",
                      labels=cells)
        print(f"order plot: {args.order_png}")
    if args.show_order:
        cells = ["." if g else str(int(o)) for o, g in zip(order, data.given[0], strict=True)]
        off = 0
        grid = None if shape else task.cell_grid()
        if grid is not None:  # the answer grid alone, when every position outside it is given (a Zebra's clues)
            outside = np.ones(len(cells), dtype=bool)
            outside[grid[0] : grid[0] + grid[1] * grid[2]] = False
            if bool(np.asarray(data.given[0])[outside].all()):
                off, shape = grid[0], (grid[1], grid[2])
        where = " of the answer grid" if grid is not None and shape else ""
        print(f"order (forward pass at which each position{where} was committed; '.' = given):")
        w = max(len(c) for c in cells)
        if shape:
            for r in range(shape[0]):
                print(" ".join(c.rjust(w) for c in cells[off + r * shape[1] : off + (r + 1) * shape[1]]))
        else:
            print(" ".join(cells))
    return 0 if ok or (valid and not unique) else 1


def _solve_data(task: Any, text: str, source: Path | None, stdin: bool) -> Any:
    """What ``solve`` decodes: one puzzle (``task.parse``), else - from a file or stdin - a file of puzzles
    (``task.read_file``, e.g. one per line). Neither: one line saying why for both readings."""
    import os
    import tempfile

    try:
        return task.parse(text)
    except InputError as exc:
        one = str(exc)
        if source is None and not stdin:  # a puzzle on the command line
            if "\n" not in text.strip() and re.search(r"[/\\]|\.[A-Za-z]{2,5}$", text.strip()):
                raise InputError(f"'{text.strip()}' is no file, and as a puzzle: {one}") from None
            raise
    if source is not None:
        where, path = str(source), str(source)
    else:
        fd, path = tempfile.mkstemp(prefix=".unmask-stdin-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        where = "stdin"
    try:
        data = task.read_file(path)
    except InputError as exc:
        many = str(exc).replace(path, where)
        raise InputError(f"{where} is neither one puzzle ({one}) nor a file of puzzles ({many})") from None
    finally:
        if source is None:
            os.unlink(path)
    if not len(data):
        raise InputError(f"{where} holds no puzzle")
    return data


def _solve_many(args: argparse.Namespace, task: Any, data: Any, engine: Any, strategy: Any, where: str) -> int:
    """``solve`` over several puzzles (a file, or stdin): each answer printed, or written to ``--out`` (JSON Lines
    or CSV: index, puzzle, answer, solved, valid, nfe)."""
    import numpy as np

    from unmask.core.api import answer_text
    from unmask.core.evaluate import evaluate_with
    from unmask.core.report import write_rows

    n = len(data)
    if n > 1 and (args.show_order or args.order_png):
        raise InputError(f"--show-order and --order-png draw one puzzle, and {where} holds {n}; solve one at a time "
                         "for its order, or use 'unmask eval --data FILE --trace' for the mean order")
    res = evaluate_with(engine, task, data, strategy, batch_size=256, seed=args.seed, device=engine.device,
                        progress=_progress(args), retries=args.retries, retry_noise=args.retry_noise)
    pred = res.predictions
    assert pred is not None  # evaluate_with keeps the predictions
    scores = res.per_example
    solved = np.asarray(scores["solved"])
    ok = solved >= 1.0 if solved.dtype.kind == "f" else solved.astype(bool)
    invalid = np.asarray(scores.get("invalid", np.zeros(n, dtype=bool))).astype(bool)
    unique = np.asarray(data.meta.get("unique", np.ones(n, dtype=bool))).astype(bool)
    rows = []
    for i in range(n):
        cells = task.format_cells(data.inputs[i])
        puzzle = {"puzzle": "".join(cells)} if cells is not None and all(len(c) == 1 for c in cells) else {}
        rows.append({"index": i + 1, **puzzle, "answer": answer_text(task, pred[i], data.given[i]),
                     "solved": bool(ok[i]), "valid": not bool(invalid[i]), "nfe": int(scores["nfe"][i])})
        if not args.out:
            print(f"--- {i + 1}: {'solved' if ok[i] else 'valid, not the solution' if not invalid[i] else 'NOT solved'}"
                  f"; {int(scores['nfe'][i])} forward passes")
            print(task.format(pred[i]))
    if args.out:
        write_rows(args.out, rows)
    written = f"; answers written to {args.out}" if args.out else ""
    print(f"{int(ok.sum())} of {n} solved ({100 * float(ok.mean()):.1f}%); mean {float(np.mean(scores['nfe'])):.1f} "
          f"forward passes; strategy {_labels(args.strategy, [strategy])[0]}{written}")
    return 0 if bool((ok | (~invalid & ~unique)).all()) else 1


def _rows_file(text: str) -> str:
    """An argparse type: a path for per-example rows, ending in .jsonl or .csv."""
    from unmask.core.report import ROW_FORMATS

    _path(text)
    if Path(text).suffix.lower() not in ROW_FORMATS:
        raise argparse.ArgumentTypeError(f"end it in .jsonl (JSON Lines) or .csv, got {text!r}")
    return text


# -- serve ----------------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from unmask.core import serve

    missing = serve.missing_extra()
    if missing:
        raise InputError(
            f"unmask serve needs the 'serve' extra ({missing} is not installed): pip install -e '.[serve]'"
        )
    engine, task, _ = _engine_and_task(args)
    strategy = serve_strategy(engine, task, args.strategy, args.steps, args.opt, "serve")
    return serve.run(args, engine, task, strategy)


# -- experiment -----------------------------------------------------------------------------------------------------
def cmd_experiment(args: argparse.Namespace) -> int:
    import shlex

    from unmask.core.experiment import _rel, run_experiment

    given = [("--scale", args.scale), ("--runs", args.runs), ("--results", args.results), ("--n", args.n),
             ("--seed", args.seed), ("--device", None if args.device == "auto" else args.device),
             ("--batch-size", None if args.batch_size == 256 else args.batch_size),
             ("--steps", None if args.steps == 50 else args.steps),
             ("--models", ",".join(args.models) if args.models else None)]
    words = [_rel(args.file)]  # the command as typed (defaults left out), for the table's Commands section
    for flag, value in given:
        if value is not None:
            words += [flag, str(value)]
    for item in args.set:
        words += ["--set", item]
    command = "unmask experiment " + shlex.join(words + (["--no-progress"] if args.no_progress else []))
    run_experiment(args.file, scale=args.scale, runs_dir=args.runs, results_dir=args.results, n_eval=args.n,
                   seed=args.seed, device=args.device, batch_size=args.batch_size, steps=args.steps,
                   overrides=args.set, models=args.models, progress=_progress(args), command=command)
    return 0


def _keys(text: str) -> list[str]:
    """An argparse type: comma-separated keys."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"expected comma-separated model keys, got {text!r}")
    return keys


def build_parser() -> argparse.ArgumentParser:
    from unmask.core import __version__

    p = _Parser(prog="unmask", description="Masked diffusion models that plan their decoding order.")
    p.add_argument("--version", action="version", version=f"unmask {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered plugins")
    s.add_argument("kind", nargs="?", choices=(*KINDS, "models"), help="one kind only (default: all); models: the "
                   "model names --model takes")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("train", help="train a model from a TOML config")
    s.add_argument("--config", required=True, type=_path, help="TOML file, or the name of a packaged config (a file "
                   "of the installed configs/ without .toml; its run and cache then go under $UNMASK_HOME or "
                   "~/.cache/unmask)")
    s.add_argument("--out", metavar="DIR", type=_path, help="run directory (overrides the config's out)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (there is none when stderr is not a "
                   "terminal)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("curves", help="plot the training curves of one run or several overlaid",
                       description="Plot and print the training curves of one run or several overlaid; with several, "
                       "also how much training (on the --x axis) each needed to reach the highest validation score "
                       "every one of them reached, % solved and % of cells, against the first run.")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run or model directory, metrics.jsonl or a model name "
                   "(unmask list models), as PATH or LABEL=PATH")
    s.add_argument("--out", required=True, metavar="PNG", type=_image,
                   help="where to write the plot (.png, or .pdf, .svg, ...)")
    s.add_argument("--x", choices=("samples", "step", "seconds", "flops"), default="samples",
                   help="x axis: samples seen (default), optimizer step, training seconds or training FLOPs (runs "
                   "logged without them: derived from samples and the run's config)")
    s.add_argument("--title", help="plot title")
    s.set_defaults(fn=cmd_curves)

    def model_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--model", type=_path, help="model directory, run directory, .onnx or .plan, or a model name "
                       "(unmask list models; a path that exists wins) (default: the packaged default model that "
                       "models/DEFAULT names)")
        s.add_argument("--runtime", help="torch, onnxruntime, tensorrt, ... (default: from the model path)")
        s.add_argument("--device", help="cpu, cuda (or tensorrt for onnxruntime)")
        s.add_argument("--bf16", action="store_true", help="bf16 autocast (torch runtime)")
        s.add_argument("--compile", action="store_true", help="torch.compile the forward (torch runtime; compiles "
                       "for seconds to tens of seconds at start; 1.1-1.17x faster passes measured on a Xeon with AMX)")
        s.add_argument("--micro-batch", type=_count, metavar="N", help="CPU rows per engine call: bigger batches "
                       "run in slices of N, which stay in cache (0 = whole batch; default 32 torch, 16 onnxruntime)")
        s.add_argument("--threads", type=_positive, help="CPU threads for the runtime (default: 1 for solve, else the "
                       "cores not already busy)")
        s.add_argument("--steps", type=_positive, help="decoding steps T (default: the strategy's, 50)")
        s.add_argument("--opt", action="append", metavar="KEY=VALUE",
                       help="strategy option for every strategy, e.g. noise=gumbel, noise_scale=0.5, value=sample "
                       "(per strategy: --strategies NAME:KEY=VALUE)")
        s.add_argument("--seed", type=_seed, default=0, help="seed of the decoding randomness and of --generate")
        s.add_argument("--trust-remote-code", action="store_true", help="a Hugging Face model directory with its own "
                       "modeling code (LLaDA, Dream): run that code; this EXECUTES THE CHECKPOINT'S PYTHON CODE on "
                       "this machine, only for checkpoints you trust")

    s = sub.add_parser("eval", help="evaluate strategies on generated or given data")
    model_args(s)
    s.add_argument("--task", help="task name (checked against the model's)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=_path, help="data file of the task's format")
    src.add_argument("--generate", type=_positive, metavar="N", help="generate N examples")
    s.add_argument("--split", default="test", help="split to generate: test or hard (default test)")
    s.add_argument("--strategies", default="vanilla,top_prob,margin", metavar="NAME[:KEY=VALUE...],...",
                   help="strategies to compare, each with its own options, e.g. "
                   "margin,confidence_threshold:tau=0.99,factor:f=0.1")
    s.add_argument("--batch-size", type=_positive, default=256, help="rows decoded at once")
    s.add_argument("--scheduler", choices=("static", "continuous"), default="static",
                   help="static batches, or a slot table refilled as rows finish")
    _retry_arguments(s)
    s.add_argument("--json", type=_path, help="write results as JSON (and a bar chart PNG beside it)")
    s.add_argument("--trace", action="store_true", help="record the commit order and plot it")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (there are none when stderr is not "
                   "a terminal)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("solve", help="solve a puzzle given as text, or a file of puzzles (or - for stdin)")
    model_args(s)
    s.add_argument("--strategy", default="margin", metavar="NAME[:KEY=VALUE...]",
                   help="decoding strategy, optionally with options, e.g. confidence_threshold:tau=0.99")
    _retry_arguments(s)
    s.add_argument("--show-order", action="store_true", help="print the order in which cells were committed")
    s.add_argument("--order-png", metavar="PNG", type=_image, help="save the commit order as a PNG heat map")
    s.add_argument("--out", metavar="FILE", type=_rows_file, help="write every answer (index, puzzle, answer, "
                   "solved, valid, nfe) to FILE: .jsonl (JSON Lines) or .csv")
    s.add_argument("--no-progress", action="store_true", help="no progress bar over several puzzles (there is none "
                   "when stderr is not a terminal)")
    s.add_argument("puzzle", help="81 characters (0 or . for blanks) or 9 lines of 9; a file of puzzles (one per "
                   "line); or - to read one or several from stdin")
    s.set_defaults(fn=cmd_solve)

    parser_class, sub._parser_class = sub._parser_class, _LazyParser  # argparse takes no parser_class per command
    s = sub.add_parser("serve", help="serve a model over HTTP, batching concurrent requests continuously")
    sub._parser_class = parser_class
    model_args(s)
    s.set_defaults(fn=cmd_serve)
    cast(_LazyParser, s).more = _serve_arguments

    s = sub.add_parser("experiment", help="run an experiment file: train what is missing, evaluate, write the table")
    s.add_argument("file", metavar="FILE", help="experiment TOML file, or the name of a packaged one (e.g. table2; "
                   "see configs/experiments/)")
    s.add_argument("--scale", help="one of the file's [scales], e.g. smoke (default: the file's default_scale)")
    s.add_argument("--runs", metavar="DIR", type=_path, help="root of the run directories (default: the scale's "
                   "runs, else each config's out)")
    s.add_argument("--results", metavar="DIR", type=_path, help="where <name>.md, .json and the plots go (default: "
                   "the scale's results, else results/)")
    s.add_argument("--n", type=_positive, help="evaluation examples of every dataset (default: the file's)")
    s.add_argument("--seed", type=_seed, help="data and decoding seed of every dataset (default: the file's, else "
                   "2025)")
    s.add_argument("--device", default="auto", help="evaluation device: auto, cpu or cuda (training follows each "
                   "config's train.device)")
    s.add_argument("--batch-size", type=_positive, default=256, help="evaluation batch size")
    s.add_argument("--steps", type=_positive, default=50, help="decoding steps T of the strategies")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model, e.g. train.threads=2")
    s.add_argument("--models", type=_keys, metavar="KEY,...", help="only these models of the file (and their rows)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (there are none when stderr is not "
                   "a terminal)")
    s.set_defaults(fn=cmd_experiment)

    _plugin_commands(sub)
    return p


COMMANDS_GROUP = "unmask_commands"


def _plugin_commands(sub: Any) -> None:
    """Subcommands that packages provide through the entry-point group ``unmask_commands``: a module with ``HELP``
    (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (``unmask export`` is ``unmask.export.cli``). One
    that fails to load, or whose name is taken, is a warning naming it; the other commands keep working."""
    from importlib.metadata import entry_points

    from unmask.core.registry import PluginWarning, load_failure

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:
            warnings.warn(f"command '{ep.name}' (entry point {ep.value} in {COMMANDS_GROUP}) is already taken; "
                          "rename its entry point", PluginWarning, stacklevel=2)
            continue
        try:
            module = ep.load()
            help_text, add, run = str(module.HELP), module.add_arguments, module.run
            s = sub.add_parser(ep.name, help=help_text)
            add(s)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            sub.choices.pop(ep.name, None)
            warnings.warn(f"command '{ep.name}' (entry point {ep.value} in {COMMANDS_GROUP}) failed to load: "
                          f"{load_failure(exc)}", PluginWarning, stacklevel=2)
            continue
        s.set_defaults(fn=run)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _warning_line  # one line per warning (broken plugins), no source dump
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except UnmaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RecursionError:  # a file nested thousands deep, read where no reader names it (see _engine_and_task)
        print("error: an input file nests tables or arrays too deeply to read; it is damaged or not what this command "
              "reads: check the files named on the command line", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use smaller sizes (--batch-size, train.batch_size, backbone.d_model)",
              file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, a file vanishing mid-run: the environment, not a bug
        where = f": '{exc.filename}'" if exc.filename else ""
        hint = "free some disk space and retry" if exc.errno == errno.ENOSPC else "check the path and retry"
        print(" ".join(f"error: {exc.strerror or exc}{where}; {hint}".split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a third-party plugin's bug is one line naming it; ours stay tracebacks
        culprit = _plugin_culprit(exc)
        if culprit is None:
            raise
        print(" ".join(f"error: {culprit} failed: {type(exc).__name__}: {exc}; report it to that package".split()),
              file=sys.stderr)
        return 2


def _plugin_culprit(exc: BaseException) -> str | None:
    """``"<kind> '<name>' (package '<pkg>')"`` of the third-party plugin whose code raised ``exc``: of every frame of
    the traceback in a plugin's code, the surest match (the plugin object's own code, then its module, then its
    package; the innermost frame among equals), so that a strategy's ``__init__`` is blamed on the strategy even
    when one package provides a runtime too."""
    from unmask.core.registry import registries

    plugins = []
    for reg in registries.values():
        try:
            plugins += reg.third_party_plugins()
        except Exception:  # noqa: BLE001 - never let the error report itself fail
            continue
    best, found = 0.0, None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        qualname = getattr(tb.tb_frame.f_code, "co_qualname", tb.tb_frame.f_code.co_name)
        for p in plugins:
            score = p.match(module, qualname)
            if score and score >= best:
                best, found = score, f"{p.what} (package '{p.package}')"
        tb = tb.tb_next
    return found


if __name__ == "__main__":
    sys.exit(main())
