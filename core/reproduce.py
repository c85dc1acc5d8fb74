"""Reproduce the paper's tables: train what is missing (or reuse it), evaluate, write ``table<N>.md`` side by side.

Kim et al., ICML 2025, "Train for the Worst, Plan for the Best": Table 1 (L&O-NAE-SAT, vanilla vs adaptive),
Table 2 (Sudoku: ARMs with / without ordering, MDM vanilla / top prob. / margin), Table 3 (Zebra, the same rows),
Table 5 (hard Sudoku, the Table 2 models). The paper's numbers are those of ``PAPER.md``.

Scales: ``smoke`` (tiny models, a few steps: exercises the pipeline in seconds; the numbers mean nothing), ``cpu``
(the ``configs/*-cpu.toml`` / ``sudoku-default.toml`` / ``*-arm.toml`` models; about two hours per table on 2 cores
when nothing is reused), ``paper`` (``configs/*-paper.toml``: the paper's model sizes, for GPUs).

Every model lives in a run directory (``runs/<name>``, the config's own ``out`` for the base variant). A finished
model there (``<run>/model``) is reused when its task, backbone and objective match and it trained at least the
planned steps; a run with checkpoints but no final model is resumed; otherwise the model is trained. Training and
evaluation are :func:`unmask.core.train.train` and :func:`unmask.core.distributed.sharded_evaluate` (the same code as
``unmask train`` / ``unmask eval``), so under ``torchrun`` training is DDP, evaluation is sharded and rank 0 writes
the tables.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmask.core.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
TABLES = (1, 2, 3, 5)
SCALES = ("smoke", "cpu", "paper")
MDM_STRATEGIES = ("vanilla", "top_prob", "margin")

# Paper numbers (PAPER.md, "Results to reproduce"), % solved.
PAPER_SUDOKU = {"arm_row_major": 9.73, "arm_solver": 87.18, "vanilla": 6.88, "top_prob": 18.51, "margin": 89.49}
PAPER_HARD = {"arm_row_major": None, "arm_solver": 32.57, "vanilla": 3.62, "top_prob": 9.44, "margin": 49.88}
PAPER_ZEBRA = {"arm_row_major": 80.31, "arm_solver": 91.17, "vanilla": 76.9, "top_prob": 98.5, "margin": 98.3}
PAPER_LO = {(25, 275): (78.06, 93.76), (30, 270): (75.70, 93.54), (40, 260): (74.60, 92.21),
            (50, 250): (67.94, 90.01), (100, 200): (62.84, 88.91)}

# Tiny models for the smoke scale.
SMOKE = ["train.steps=2", "train.batch_size=4", "train.data_size=16", "train.val_size=0", "train.warmup_steps=1",
         "train.ckpt_every=2", "train.log_every=1", "train.threads=1", "backbone.d_model=32", "backbone.n_layers=1",
         "backbone.n_heads=2", "train.keep_steps=[1]"]


@dataclass
class ModelPlan:
    """One model of a table: a config file, overrides, and the run-directory suffix of this variant."""

    key: str
    config: str
    overrides: list[str] = field(default_factory=list)
    suffix: str = ""
    label: str = ""


@dataclass
class Row:
    """One line of a table: a method (model + decoding) and the paper's number for it."""

    method: str
    model: str  # ModelPlan.key
    strategy: str  # an MDM strategy name, or "arm"
    paper: float | None
    paper_model: str
    split: str = "test"
    group: str = ""  # Table 1: "(N, P)"
    options: dict[str, Any] = field(default_factory=dict)  # strategy options beyond steps, e.g. value = "sample"


@dataclass
class Plan:
    table: int
    title: str
    models: list[ModelPlan]
    rows: list[Row]
    n_eval: int
    notes: list[str] = field(default_factory=list)


# -- the tables -------------------------------------------------------------------------------------------------------
def _cfg(name: str) -> str:
    return str(ROOT / "configs" / name)


def _scaled(scale: str, cpu: str, paper: str) -> str:
    return _cfg(paper if scale == "paper" else cpu)


def _sudoku_models(scale: str) -> list[ModelPlan]:
    mdm = _scaled(scale, "sudoku-default.toml", "sudoku-paper.toml")
    arm = _scaled(scale, "sudoku-arm.toml", "sudoku-arm-paper.toml")
    return [
        ModelPlan("mdm", mdm, label="MDM"),
        ModelPlan("arm_solver", arm, ["train.order=solver"], label="ARM with ordering"),
        ModelPlan("arm_row_major", arm, ["train.order=row_major"], suffix="-row_major", label="ARM w/o ordering"),
    ]


PAPER_NOISE = 0.5  # the paper's puzzle decoding: Gumbel noise with coefficient 0.5 on the scores
NOISE_SWEEP = (0.0, 0.1, 0.2)  # extra rows: how the two adaptive scores bear noise (the paper's 0.5 comes first)


def _noise(scale: float) -> dict[str, Any]:
    return {"noise": "gumbel", "noise_scale": scale} if scale else {}


def _noise_words(scale: float) -> str:
    return "no noise" if not scale else f"Gumbel {scale:g}" + (" (paper's decoding)" if scale == PAPER_NOISE else "")


def _puzzle_rows(paper: Mapping[str, float | None], mdm_size: str, split: str) -> list[Row]:
    """ARM rows, MDM vanilla, then top prob. / margin under the paper's Gumbel noise (beside the paper's numbers)
    and under the other noise scales of :data:`NOISE_SWEEP` (no paper number)."""
    rows = [
        Row("ARM w/o ordering", "arm_row_major", "arm", paper["arm_row_major"], "42M", split),
        Row("ARM with ordering", "arm_solver", "arm", paper["arm_solver"], "42M", split),
        Row("MDM vanilla", "mdm", "vanilla", paper["vanilla"], mdm_size, split),
    ]
    for scale in (PAPER_NOISE, *NOISE_SWEEP):
        for name, strategy in (("MDM top prob.", "top_prob"), ("MDM top prob. margin", "margin")):
            number = paper[strategy] if scale == PAPER_NOISE else None
            rows.append(Row(f"{name}, {_noise_words(scale)}", "mdm", strategy, number, mdm_size, split,
                            options=_noise(scale)))
    return rows


N_EVAL = {"smoke": 4, "cpu": 500, "paper": 5000}
LO_PAIRS = {"smoke": [(25, 275), (100, 200)], "cpu": [(25, 275)], "paper": list(PAPER_LO)}
ARGMAX_MARGIN, ARGMAX_VANILLA = "margin, argmax values", "vanilla, argmax values"
# decodings of Table 1's training-budget sweep
BUDGET_METHODS = ("vanilla", "adaptive (margin)", ARGMAX_VANILLA, ARGMAX_MARGIN)
ALWAYS_ONE = 75.0  # L&O score of writing 1 for every observation (NAE of uniform bits is 1 w.p. 3/4)
# per (N, P) pair at cpu scale: ~80 min on one core (with the relation bias the rule is learnt by ~200)
LO_CPU_STEPS = 1500


def build_plan(table: int, scale: str, pairs: list[tuple[int, int]] | None = None) -> Plan:
    if table not in TABLES:
        raise InputError(f"--table {table} is not reproducible here; use one of {', '.join(map(str, TABLES))}")
    if scale not in SCALES:
        raise InputError(f"--scale {scale} is unknown; use one of {', '.join(SCALES)}")
    n = N_EVAL[scale]
    if table in (2, 5):
        hard = table == 5
        notes = ["Table 5 evaluates the Table 2 models on the hard split: puzzles the 7-technique solver cannot finish "
                 "(the ARM w/o ordering row is not in the paper's Table 5)."] if hard else []
        return Plan(table, "hard Sudoku" if hard else "Sudoku", _sudoku_models(scale),
                    _puzzle_rows(PAPER_HARD if hard else PAPER_SUDOKU, "6M", "hard" if hard else "test"), n, notes)
    if table == 3:
        mdm = _scaled(scale, "zebra-cpu.toml", "zebra-paper.toml")
        arm = _scaled(scale, "zebra-arm.toml", "zebra-arm-paper.toml")
        models = [ModelPlan("mdm", mdm, label="MDM"),
                  ModelPlan("arm_solver", arm, ["train.order=solver"], label="ARM with ordering"),
                  ModelPlan("arm_row_major", arm, ["train.order=row_major"], suffix="-row_major",
                            label="ARM w/o ordering")]
        notes = [] if scale == "paper" else [
            "At cpu scale the Zebra puzzles are 3-4 houses x 3-4 attributes (the paper: 3-6 x 3-6).",
            "The cpu-scale MDM's attention is biased along what each clue refers to (`backbone.relation_bias` with "
            "Zebra's token relations: a clue's item and the answer cell holding it, a house and its cells); the same "
            "model without it stayed near chance (33% of cells, 0.33% solved with margin at Gumbel 0.5, 2,500 steps)."]
        return Plan(3, "Zebra", models, _puzzle_rows(PAPER_ZEBRA, "19M", "test"), n, notes)
    # Table 1
    chosen = pairs or LO_PAIRS[scale]
    cfg = _scaled(scale, "lo_nae_sat-cpu.toml", "lo_nae_sat-paper.toml")
    models, rows = [], []
    for N, P in chosen:
        key = f"lo_{N}_{P}"
        extra = [f"task.n_latent={N}", f"task.n_obs={P}"]
        if scale == "cpu":
            extra.append(f"train.steps={LO_CPU_STEPS}")
        base = (N, P) == (25, 275)  # the config's own (N, P): its run directory
        models.append(ModelPlan(key, cfg, extra, suffix="" if base else f"-{N}-{P}", label=f"MDM (N, P) = ({N}, {P})"))
        pv, pa = PAPER_LO.get((N, P), (None, None))
        sample = {"value": "sample"}  # the paper samples values; its reference code takes the argmax (a column)
        group = f"({N}, {P})"
        rows.append(Row("vanilla", key, "vanilla", pv, "19M", "test", group, sample))
        rows.append(Row("adaptive (margin)", key, "margin", pa, "19M", "test", group, sample))
        rows.append(Row(ARGMAX_VANILLA, key, "vanilla", None, "19M", "test", group, {"value": "argmax"}))
        rows.append(Row(ARGMAX_MARGIN, key, "margin", None, "19M", "test", group, {"value": "argmax"}))
        # the paper does not state L&O's noise: its puzzle decoding (Gumbel 0.5) and top prob. as extra columns
        rows.append(Row(f"margin, Gumbel {PAPER_NOISE:g}", key, "margin", None, "19M", "test",
                        group, {**sample, **_noise(PAPER_NOISE)}))
        rows.append(Row("top prob.", key, "top_prob", None, "19M", "test", group, sample))
    notes = ["Score: the mean fraction of generated observations consistent with the generated latents, sequences "
             "generated from all-mask (always writing 1 scores 75%).",
             "Probe (`Task.diagnostics`, 1,024 sampled sequences, one pass, argmax): % of observations right when "
             "every latent is shown (100 = the triples and the NAE rule are learnt; 75 = blind to the latents), and "
             "% of latents 2..N right when every observation and latent 1 are shown (latent 1 pins the global flip; "
             "50 = no inference)."]
    notes.append("Adaptive (margin) decodes as the other columns without noise; the paper does not state L&O's "
                 "noise, so \"margin, Gumbel 0.5\" uses its puzzle decoding (Gumbel noise, coefficient 0.5). The "
                 "paper samples token values; the reference code it builds on takes the argmax (\"margin, argmax "
                 "values\"), and so does \"vanilla, argmax values\" (random order, argmax tokens).")
    if scale == "cpu":
        notes.append(f"cpu scale: {len(chosen)} of the paper's 5 (N, P) pairs, {LO_CPU_STEPS} training steps each "
                     "(`--pairs` picks others); a finished model with more steps in the run directory is reused. "
                     "The backbone's attention is biased along the task's relations (an observation and its three "
                     "latents: `backbone.relation_bias`); without it the 0.8M model never found the triples "
                     "(probe 75%) in 3,000 steps. The run keeps checkpoints at `train.keep_steps`; each is decoded "
                     "again (the training-budget table and `table1-budget.png`).")
    return Plan(1, "L&O-NAE-SAT", models, rows, n, notes)


# -- models ---------------------------------------------------------------------------------------------------------
@dataclass
class ModelInfo:
    plan: ModelPlan
    path: Path
    config: dict[str, Any]
    reused: bool
    train_seconds: float | None
    params: int | None
    command: str
    diagnostics: dict[str, float] = field(default_factory=dict)  # Task.diagnostics of the model (rank 0)
    keep_steps: list[int] = field(default_factory=list)  # the planned config's train.keep_steps
    budget_of: str = ""  # a kept checkpoint of another model of the table (its key): Table 1's budget sweep


def _rel(p: Path | str) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _run_dir(plan: ModelPlan, scale: str, runs_dir: Path | None, config_out: str) -> Path:
    name = Path(config_out).name
    if scale == "smoke":
        return (runs_dir or Path("runs") / "smoke") / f"{name}{plan.suffix}"
    return (runs_dir / f"{name}{plan.suffix}") if runs_dir is not None else Path(f"{config_out}{plan.suffix}")


def _wanted(resolved: Any) -> dict[str, Any]:
    from unmask.core.config import plugin_section, resolve_plugin
    from unmask.core.registry import backbones

    name, _, options = resolve_plugin(backbones, resolved.raw["backbone"], "backbone")
    return {"task": resolved.task.config_dict(), "backbone": plugin_section(name, options)}


def _matches(cfg: dict[str, Any], want: dict[str, Any], train: Any) -> bool:
    t = cfg.get("train", {})
    return (cfg.get("task") == want["task"] and cfg.get("backbone") == want["backbone"]
            and t.get("objective", "mdm") == train.objective
            and (train.objective != "arm" or t.get("order", "solver") == train.order)
            and int(cfg.get("step", t.get("steps", 0))) >= train.steps)


def ensure_model(plan: ModelPlan, scale: str, *, runs_dir: Path | None = None, overrides: list[str] | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> ModelInfo:
    """The trained model of ``plan``: reused when a matching finished model exists, else trained (or resumed)."""
    from unmask.core import checkpoint as ckpt
    from unmask.core.config import load_toml
    from unmask.core.train import resolve_config, train

    raw = load_toml(plan.config)
    sets = list(plan.overrides) + (SMOKE if scale == "smoke" else []) + list(overrides or [])
    out = _run_dir(plan, scale, runs_dir, str(raw.get("out", Path(plan.config).stem)))
    sets.append(f'out="{out}"')
    resolved = resolve_config(plan.config, sets)
    want = _wanted(resolved)
    cfg_rel = _rel(plan.config)
    command = "unmask train --config " + shlex.quote(cfg_rel) + "".join(f" --set {shlex.quote(s)}" for s in sets)
    candidates = [out / "model"]
    if scale == "cpu" and plan.key == "mdm" and Path(plan.config).name == "sudoku-default.toml":
        # the committed default model first: it is stage 1 of this config plus a warm-started stage 2
        # (configs/sudoku-default-stage2.toml), so it beats a stage-1-only run directory
        candidates.insert(0, ROOT / "models" / "sudoku-default")
    for cand in candidates:
        if (cand / ckpt.CONFIG_FILE).is_file() and (cand / ckpt.MODEL_FILE).is_file():
            cfg = ckpt.read_config(cand)
            if _matches(cfg, want, resolved.train):
                log(f"[{plan.key}] reusing {_rel(cand)} (step {cfg.get('step')})")
                return _info(plan, cand, cfg, True, command, resolved.train.keep_steps)
    resume = ckpt.latest_checkpoint(out) is not None if (out / "checkpoints").exists() else False
    log(f"[{plan.key}] {'resuming' if resume else 'training'} {_rel(out)}: {command}")
    final = train(plan.config, sets, resume=resume, progress=progress)
    from unmask.core.distributed import barrier

    barrier()
    cfg = ckpt.read_config(final)
    return _info(plan, final, cfg, False, command, resolved.train.keep_steps)


def _info(plan: ModelPlan, path: Path, cfg: dict[str, Any], reused: bool, command: str,
          keep_steps: list[int]) -> ModelInfo:
    from unmask.core.checkpoint import MODEL_FILE, load_tensors

    try:
        params = int(sum(t.numel() for t in load_tensors(Path(path) / MODEL_FILE).values()))
    except Exception:  # noqa: BLE001 - informational only
        params = None
    secs = cfg.get("train_seconds")
    return ModelInfo(plan, Path(path), cfg, reused, float(secs) if secs is not None else None, params, command,
                     keep_steps=sorted(keep_steps))


def add_budget_sweep(plan: Plan, models: dict[str, ModelInfo]) -> None:
    """Table 1: the checkpoints a model's run kept at ``train.keep_steps`` join the table as models ``key@step``,
    decoded as :data:`BUDGET_METHODS` (the same model at several training budgets). Missing ones are named in a note."""
    from dataclasses import replace

    from unmask.core import checkpoint as ckpt

    if plan.table != 1:
        return
    for key, info in list(models.items()):
        if not info.keep_steps or info.budget_of:
            continue
        run = info.path.parent if info.path.name == "model" else None
        final = int(info.config.get("step", 0))
        base = [r for r in plan.rows if r.model == key and r.method in BUDGET_METHODS]
        missing = []
        for step in (k for k in info.keep_steps if k < final):
            c = ckpt.checkpoint_at(run, step) if run is not None else None
            if c is None:
                missing.append(step)
                continue
            state, _ = ckpt.load_training_state(c)
            models[f"{key}@{step}"] = ModelInfo(info.plan, c, ckpt.read_config(c), True,
                                                state.get("train_seconds"), info.params, info.command,
                                                budget_of=key)
            plan.rows += [replace(r, model=f"{key}@{step}", paper=None) for r in base]
        if missing:
            plan.notes.append(f"{info.plan.label}: no checkpoint at step(s) {', '.join(map(str, missing))} in "
                              f"`{_rel(info.path.parent)}/checkpoints` (trained without `train.keep_steps`?); train "
                              "the run again to get the whole budget sweep.")


# -- evaluation -------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    row: Row
    solved: float
    cell_accuracy: float
    nfe_mean: float
    n: int
    seconds: float
    options: dict[str, Any]


def evaluate_rows(plan: Plan, models: dict[str, ModelInfo], *, n_eval: int, seed: int, device: str,
                  batch_size: int, steps: int, progress: bool,
                  log: Callable[[str], None]) -> tuple[list[Cell], list[str]]:
    from unmask.core.arm import ArmLayout, is_arm
    from unmask.core.distributed import is_main, sharded_evaluate
    from unmask.core.runtime import open_engine
    from unmask.core.strategy import build_strategy
    from unmask.core.task import build_task

    cells: list[Cell] = []
    commands: list[str] = []
    datasets: dict[str, Any] = {}
    by_model: dict[tuple[str, str], list[Row]] = {}
    for r in plan.rows:
        by_model.setdefault((r.model, r.split), []).append(r)
    for (key, split), rows in by_model.items():
        info = models[key]
        engine = open_engine(info.path, "torch", device=device)
        task = build_task(engine.config["task"], "model task")
        dkey = json.dumps([task.config_dict(), split, n_eval, seed], sort_keys=True)
        if dkey not in datasets:
            datasets[dkey] = task.generate(split, n_eval, seed, progress=progress and is_main())
        data = datasets[dkey]
        if is_main() and not info.diagnostics:
            info.diagnostics = task.diagnostics(engine, 1024, seed)
        by_options: dict[str, list[str]] = {}  # one eval command per set of strategy options
        for r in rows:
            by_options.setdefault(json.dumps(r.options, sort_keys=True), []).append(r.strategy)
        for opts, names in by_options.items():
            cmd = (f"unmask eval --model {shlex.quote(_rel(info.path))} --generate {n_eval} --split {split} "
                   f"--seed {seed} --strategies {','.join(dict.fromkeys(names))}")
            if not is_arm(engine.config):
                cmd += f" --steps {steps}"
            cmd += "".join(f" --opt {k}={v}" for k, v in sorted(json.loads(opts).items()))
            commands.append(cmd)
        for r in rows:
            if r.strategy == "arm":
                strat: Any = ArmLayout.for_config(task, engine.config)
            else:
                strat = build_strategy({"name": r.strategy, "steps": steps, **r.options}, f"strategy {r.strategy}")
            res = sharded_evaluate(engine, task, data, strat, batch_size=batch_size, seed=seed, device=engine.device,
                                   progress=progress and is_main())
            if res is None:  # not rank 0
                continue
            log(f"[{key}] {split} {r.method}: {100 * res.solved:.2f}% solved, NFE {res.nfe_mean:.1f}")
            cells.append(Cell(r, res.solved, res.cell_accuracy, res.nfe_mean, res.n, res.seconds, res.options))
    return cells, commands


# -- the report -------------------------------------------------------------------------------------------------------
def _row_key(r: Row) -> tuple[str, str, str, str]:
    return r.model, r.strategy, r.split, json.dumps(r.options, sort_keys=True)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _hms(s: float | None) -> str:
    if s is None:
        return "—"
    s = int(round(s))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(plan: Plan, scale: str, models: dict[str, ModelInfo], cells: list[Cell], eval_commands: list[str], *,
           n_eval: int, seed: int, steps: int, command: str, wall: float) -> str:
    import torch

    from unmask.core import __version__

    got = {_row_key(c.row): c for c in cells}
    L: list[str] = [f"# Table {plan.table}: {plan.title} — ours vs. the paper (scale: {scale})", ""]
    L.append("Paper: Kim et al., ICML 2025, \"Train for the Worst, Plan for the Best\" (numbers from PAPER.md). "
             f"Ours: {n_eval} generated {'/'.join(sorted({r.split for r in plan.rows}))} examples (seed {seed}). "
             f"Decoding: {_decoding_words(cells)}.")
    if scale == "smoke":
        L += ["", "**Smoke scale: tiny models trained for a few steps to exercise the pipeline; these numbers mean "
              "nothing.**"]
    L.append("")
    if plan.table == 1:
        first = [r for r in plan.rows if r.model == plan.rows[0].model]
        extra = [r.method for r in first[2:]]  # after vanilla and the main adaptive row: other decodings
        L.append("| (N, P) | paper vanilla | paper adaptive | ours vanilla | ours adaptive (margin) | "
                 + "".join(f"ours {m} | " for m in extra)
                 + "ours adaptive − vanilla | ours NFE (vanilla / adaptive) | "
                 "probe: obs given latents / latents given obs |")
        L.append("|---|" + "---:|" * (7 + len(extra)))
        for key in dict.fromkeys(r.model for r in plan.rows if not models[r.model].budget_of):
            v, a, *more = [r for r in plan.rows if r.model == key]
            cv, ca = got.get(_row_key(v)), got.get(_row_key(a))
            ov = None if cv is None else 100 * cv.solved
            oa = None if ca is None else 100 * ca.solved
            diff = None if ov is None or oa is None else oa - ov
            nfe = "—" if cv is None or ca is None else f"{cv.nfe_mean:.1f} / {ca.nfe_mean:.1f}"
            d = models[key].diagnostics
            probe = _probe(d)
            others = "".join(f"{_pct(None if (c := got.get(_row_key(r))) is None else 100 * c.solved)} | "
                             for r in more)
            L.append(f"| {v.group} | {_pct(v.paper)} | {_pct(a.paper)} | {_pct(ov)} | {_pct(oa)} | {others}"
                     f"{'—' if diff is None else f'{diff:+.2f}'} | {nfe} | {probe} |")
        L += _budget_table(plan, models, got)
    else:
        L.append("| method | paper model | paper % solved | ours % solved | ours cell acc. % | ours mean NFE | "
                 "our model |")
        L.append("|---|---|---:|---:|---:|---:|---|")
        for r in plan.rows:
            c = got.get(_row_key(r))
            info = models[r.model]
            ours = None if c is None else 100 * c.solved
            L.append(f"| {r.method} | {r.paper_model} | {_pct(r.paper)} | {_pct(ours)} | "
                     f"{'—' if c is None else f'{100 * c.cell_accuracy:.2f}'} | "
                     f"{'—' if c is None else f'{c.nfe_mean:.1f}'} | {_model_words(info)} |")
    L += ["", "## Models", "", "| model | config | run | parameters | steps | samples | training time | |",
          "|---|---|---|---:|---:|---:|---:|---|"]
    for key, info in models.items():
        if info.budget_of:
            continue
        cfg = info.config
        L.append(f"| {info.plan.label or key} | `{_rel(info.plan.config)}` | `{_rel(info.path)}` | "
                 f"{'—' if info.params is None else f'{info.params / 1e6:.2f}M'} | {cfg.get('step', '—')} | "
                 f"{cfg.get('samples', '—')} | {_hms(info.train_seconds)} | "
                 f"{'reused' if info.reused else 'trained now'} |")
    total = sum(i.train_seconds or 0.0 for i in models.values() if not i.budget_of)
    L += ["", f"Training time of these models: {_hms(total)} in all. This reproduction took {_hms(wall)} of wall time "
          "(training not reused plus evaluation).", ""]
    L += ["## Commands", "", "```", command, "", "# what it ran (equivalent commands):"]
    L += [info.command for info in models.values() if not info.budget_of]
    L += eval_commands
    L += ["```", ""]
    if plan.notes:
        L += ["## Notes", ""] + [f"- {x}" for x in plan.notes] + [""]
    L += [f"unmask {__version__}, torch {torch.__version__}, {platform.machine()} "
          f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    return "\n".join(L)


def _probe(d: dict[str, float]) -> str:
    return (f"{100 * d['obs_given_latents']:.1f} / {100 * d['latents_given_obs']:.1f}"
            if "obs_given_latents" in d else "—")


def _budget_points(plan: Plan, models: dict[str, ModelInfo], got: dict[Any, Cell], key: str
                   ) -> list[tuple[ModelInfo, dict[str, float | None]]]:
    """The budget sweep of model ``key``: (model, {method: % solved}) per kept checkpoint, then the final model."""
    out = []
    for k in [k for k, i in models.items() if i.budget_of == key] + [key]:
        scores: dict[str, float | None] = {}
        for r in plan.rows:
            if r.model == k and r.method in BUDGET_METHODS:
                c = got.get(_row_key(r))
                scores[r.method] = None if c is None else 100 * c.solved
        out.append((models[k], scores))
    return out


def _budget_table(plan: Plan, models: dict[str, ModelInfo], got: dict[Any, Cell]) -> list[str]:
    keys = list(dict.fromkeys(i.budget_of for i in models.values() if i.budget_of))
    if not keys:
        return []
    L = ["", "## Training budget: the same run's checkpoints", "",
         "Each model above decoded again at the checkpoints its run kept (`train.keep_steps`), the last row being "
         "the model itself: how the gap between the decodings moves while the model learns.", "",
         "| (N, P) | step | samples | training time | " + "".join(f"{m} | " for m in BUDGET_METHODS)
         + "margin − vanilla (sampled) | margin − vanilla (argmax) | probe |",
         "|---|" + "---:|" * (6 + len(BUDGET_METHODS))]
    for key in keys:
        group = next(r.group for r in plan.rows if r.model == key)
        for info, sc in _budget_points(plan, models, got, key):
            def gap(a: str, b: str, sc: dict[str, float | None] = sc) -> str:
                x, y = sc.get(a), sc.get(b)
                return "—" if x is None or y is None else f"{x - y:+.2f}"

            L.append(f"| {group} | {info.config.get('step', '—')} | {info.config.get('samples', '—')} | "
                     f"{_hms(info.train_seconds)} | " + "".join(f"{_pct(sc.get(m))} | " for m in BUDGET_METHODS)
                     + f"{gap('adaptive (margin)', 'vanilla')} | {gap(ARGMAX_MARGIN, ARGMAX_VANILLA)} | "
                     f"{_probe(info.diagnostics)} |")
    return L


def _budget_plot(plan: Plan, models: dict[str, ModelInfo], cells: list[Cell], png: Path) -> Path | None:
    """Table 1: % consistent against the training step, one line per decoding (and per (N, P) when several)."""
    from unmask.core.report import line_chart

    got = {_row_key(c.row): c for c in cells}
    keys = list(dict.fromkeys(i.budget_of for i in models.values() if i.budget_of))
    curves: dict[str, list[tuple[float, float]]] = {}
    for key in keys:
        group = next(r.group for r in plan.rows if r.model == key)
        for info, sc in _budget_points(plan, models, got, key):
            for m, y in sc.items():
                if y is not None:
                    name = m if len(keys) == 1 else f"{group} {m}"
                    curves.setdefault(name, []).append((float(info.config.get("step", 0)), y))
    if not any(len(v) > 1 for v in curves.values()):
        return None
    line_chart(png, curves, {"always 1": ALWAYS_ONE}, f"Table {plan.table}: {plan.title}, the same run's checkpoints",
               xlabel="training step", ylabel="% observations consistent", logx=True)
    return png


def _decoding_words(cells: list[Cell]) -> str:
    seen: dict[str, str] = {}
    for c in cells:
        o = c.options
        if c.row.strategy == "arm":
            seen.setdefault("arm", "ARM greedy, givens teacher-forced, filled cells masked")
            continue
        noises = {json.dumps([d.options.get("noise"), d.options.get("noise_scale")]) for d in cells
                  if d.row.strategy == c.row.strategy}
        values = {d.options.get("value") for d in cells if d.row.strategy == c.row.strategy}
        value = "values as named in each row" if len(values) > 1 else f"{o.get('value')} values"
        noise = ("noise as named in each row" if len(noises) > 1 else "no noise" if o.get("noise", "none") == "none"
                 else f"{o['noise']} noise {o.get('noise_scale')}")
        k = "each position revealed w.p. 1 - s/t" if c.row.strategy == "vanilla" else \
            f"K {o.get('k_rule', 'deterministic')}"
        seen.setdefault(c.row.strategy,
                        f"{c.row.strategy} (T = {o.get('steps')}, {value}, {noise}, {k})")
    return "; ".join(seen.values()) or "—"


def _model_words(info: ModelInfo) -> str:
    p = "" if info.params is None else f"{info.params / 1e6:.2f}M, "
    return f"{p}{info.config.get('step', '?')} steps"


def results_path(table: int, scale: str, results_dir: Path | None) -> Path:
    base = results_dir or (Path("results") if scale == "cpu" else Path("results") / scale)
    return Path(base) / f"table{table}.md"


# -- entry point ------------------------------------------------------------------------------------------------------
def reproduce(table: int, scale: str, *, runs_dir: str | os.PathLike | None = None,
              results_dir: str | os.PathLike | None = None, n_eval: int | None = None, seed: int = 2025,
              device: str = "auto", batch_size: int = 256, steps: int = 50, overrides: list[str] | None = None,
              pairs: list[tuple[int, int]] | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, command: str | None = None) -> Path | None:
    """Reproduce one table; returns the written ``table<N>.md`` (None on ranks other than 0 under torchrun)."""
    from unmask.core.config import write_json
    from unmask.core.distributed import is_main, setup

    t0 = time.perf_counter()
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    setup(device)
    main = is_main()
    say = log or (print if main else (lambda s: None))
    plan = build_plan(int(table), scale, pairs)
    n = int(n_eval or plan.n_eval)
    if n < 1:
        raise ConfigError("the number of evaluation examples must be >= 1")
    if overrides and scale != "smoke":
        say(f"note: overrides for every model: {' '.join(overrides)}")
    models: dict[str, ModelInfo] = {}
    for mp in plan.models:
        models[mp.key] = ensure_model(mp, scale, runs_dir=Path(runs_dir) if runs_dir else None, overrides=overrides,
                                      progress=progress and main, log=say)
    add_budget_sweep(plan, models)
    cells, eval_cmds = evaluate_rows(plan, models, n_eval=n, seed=seed, device=device, batch_size=batch_size,
                                     steps=steps, progress=progress, log=say)
    if not main:
        return None
    out = results_path(plan.table, scale, Path(results_dir) if results_dir else None)
    cmd = command or f"python tools/reproduce.py --table {plan.table} --scale {scale}"
    text = render(plan, scale, models, cells, eval_cmds, n_eval=n, seed=seed, steps=steps, command=cmd,
                  wall=time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    write_json(out.with_suffix(".json"), {
        "table": plan.table, "scale": scale, "n_eval": n, "seed": seed, "steps": steps,
        "rows": [{"method": c.row.method, "group": c.row.group, "split": c.row.split, "strategy": c.row.strategy,
                  "model": c.row.model, "paper": c.row.paper, "ours": 100 * c.solved,
                  "cell_accuracy": 100 * c.cell_accuracy, "nfe_mean": c.nfe_mean, "n": c.n, "seconds": c.seconds,
                  "options": c.options} for c in cells],
        "models": {k: {"path": _rel(i.path), "config": _rel(i.plan.config), "reused": i.reused, "params": i.params,
                       "step": i.config.get("step"), "train_seconds": i.train_seconds, "command": i.command,
                       "diagnostics": i.diagnostics, "budget_of": i.budget_of or None}
                   for k, i in models.items()},
    })
    pngs = [p for p in (_noise_plot(plan, cells, out.with_name(f"{out.stem}-noise.png")),
                        _budget_plot(plan, models, cells, out.with_name(f"{out.stem}-budget.png"))) if p]
    say(f"wrote {out} and {out.with_suffix('.json')}" + "".join(f" and {p}" for p in pngs))
    return out


def _noise_plot(plan: Plan, cells: list[Cell], png: Path) -> Path | None:
    """Tables 2, 3, 5: % solved of top prob. and margin against the Gumbel noise scale (vanilla as a line)."""
    from unmask.core.report import line_chart

    curves: dict[str, list[tuple[float, float]]] = {}
    flat: dict[str, float] = {}
    for c in cells:
        if c.row.strategy in ("top_prob", "margin"):
            curves.setdefault(c.row.strategy, []).append((float(c.row.options.get("noise_scale", 0.0)),
                                                          100 * c.solved))
        elif c.row.strategy == "vanilla":
            flat["vanilla"] = 100 * c.solved
    if not any(len(v) > 1 for v in curves.values()):
        return None
    line_chart(png, curves, flat, f"Table {plan.table}: {plan.title}, {cells[0].n} puzzles",
               xlabel="Gumbel noise scale on the scores")
    return png


def parse_pairs(text: str | None) -> list[tuple[int, int]] | None:
    """``"25:275,50:250"`` -> [(25, 275), (50, 250)]."""
    if not text:
        return None
    out = []
    for item in text.split(","):
        try:
            a, b = item.split(":")
            out.append((int(a), int(b)))
        except ValueError:
            raise InputError(f"bad --pairs item '{item}'; expected N:P, e.g. --pairs 25:275,50:250") from None
    return out
