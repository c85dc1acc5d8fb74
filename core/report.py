"""Reports: the printed evaluation table, the JSON file, and plots (bar chart, commit-order heat map, noise
sweeps, training curves of one or several runs)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unmask.core.config import write_json
from unmask.core.errors import InputError
from unmask.core.evaluate import EvalResult
from unmask.core.files import read_text, remove_stale_temps, temp_path
from unmask.core.flops import format_flops
from unmask.core.task import Dataset, Task


def cpu_bf16() -> str:
    """This CPU's native bf16 matmuls as torch reports them: "AMX", "AVX512-BF16" or "" (none: bf16 is emulated, and
    a bf16 training step was measured at 0.41x fp32's samples/s on such an Intel Xeon, ``bench/train_step.py``)."""
    import torch

    for name, label in (("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX512-BF16")):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return label
    return ""


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name") and its native bf16 (:func:`cpu_bf16`), for benchmark
    reports: timings mean little without them, and "Intel Xeon Processor" alone names several generations."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
                platform.processor() or "unknown CPU")
    return f"{name} ({cpu_bf16() or 'no native bf16'})"


def format_table(results: list[EvalResult]) -> str:
    w = max([22, *(len(r.strategy) for r in results)])  # labels carry their options: the column fits them
    head = f"{'strategy':<{w}} {'% solved':>9} {'cell acc':>9} {'mean NFE':>9} {'puzzles/s':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.strategy:<{w}} {100 * r.solved:>9.2f} {100 * r.cell_accuracy:>9.2f} {r.nfe_mean:>9.2f} "
            f"{r.puzzles_per_s:>10.1f}"
        )
    return "\n".join(lines)


def breakdown(result: EvalResult, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """% solved (and n, and the fraction of cells right where the task scores cells) grouped by a per-example label
    (e.g. the clue count, or the technique a puzzle needs)."""
    vals = np.asarray(labels)
    solved = np.asarray(result.per_example["solved"], dtype=np.float64)
    cells = result.per_example.get("cell_accuracy")
    cells = None if cells is None else np.asarray(cells, dtype=np.float64)
    out = {}
    for v in np.unique(vals):
        sel = vals == v
        key = str(int(v)) if np.issubdtype(vals.dtype, np.integer) else str(v)
        out[key] = {"n": int(sel.sum()), "solved": float(solved[sel].mean())}
        if cells is not None:
            out[key]["cell_accuracy"] = float(cells[sel].mean())
    return out


def eval_report(task: Task, model: str, runtime: str, data: Dataset, results: list[EvalResult],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report of an evaluation: each strategy's summary with % solved by each of the task's groups."""
    groups = task.groups(data)
    res = []
    for r in results:
        d = r.summary()
        for name, labels in groups.items():
            d[f"by_{name}"] = breakdown(r, labels)
        res.append(d)
    return {"task": task.name, "model": model, "runtime": runtime, "n": len(data), "results": res, **(extra or {})}


def write_report(path: str | os.PathLike, report: dict[str, Any], title: str = "") -> Path:
    """Write the JSON report and a bar chart PNG beside it; returns the PNG path."""
    p = Path(path)
    write_json(p, report)
    png = p.with_suffix(".png")
    bar_chart(png, report, title)
    return png


ROW_FORMATS = (".jsonl", ".csv")


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write one record per example atomically (temp file + rename): JSON Lines for ``.jsonl``, else CSV with a
    header line (the keys of the first row; booleans as true/false)."""
    import csv
    import io

    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in r.items()})
        text = buf.getvalue()
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(p.parent, p.name)
    tmp = temp_path(p)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, png: Path) -> None:
    """Save ``fig`` atomically: a temporary PNG beside the target (removed if anything fails), then a rename."""
    png = Path(png)
    if png.is_dir():
        raise InputError(f"cannot write the plot '{png}': it is a directory; give a .png file path")
    png.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(png.parent, png.stem)
    tmp = temp_path(png, keep_suffix=True)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, png)
    finally:
        tmp.unlink(missing_ok=True)


def bar_chart(png: Path, report: dict[str, Any], title: str = "") -> None:
    plt = _plt()
    rs = report["results"]
    names = [r["strategy"] for r in rs]
    solved = [100 * r["solved"] for r in rs]
    long = max((len(n) for n in names), default=0) > 12  # labels with options: slanted so they never overlap
    fig, ax = plt.subplots(figsize=(max(4.5, (1.6 if long else 1.3) * len(names) + 2), 4.6 if long else 4))
    bars = ax.bar(range(len(names)), solved, color="#4C72B0")  # by position: one bar per row, even for equal names
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20 if long else 0, ha="right" if long else "center",
                       fontsize=8 if long else None)
    for b, r in zip(bars, rs, strict=True):
        ax.annotate(f"{100 * r['solved']:.1f}%\nNFE {r['nfe_mean']:.0f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% solved")
    ax.set_title(title or f"{report['task']}: {report['n']} examples, {report['runtime']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


def order_heatmap(png: Path, order: np.ndarray, given: np.ndarray, shape: tuple[int, int], title: str, *,
                  vmax: float | None = None, labels: list[str] | None = None) -> None:
    """Mean commit step of each board cell (given cells excluded, drawn grey), as a heat map.

    ``vmax``: top of the colour scale (pass the same value for several maps so their colours compare; default: this
    map's largest). ``labels`` (one per cell, e.g. the digits of one solved puzzle): written in each cell, givens in
    bold black, decoded cells with their commit step below.
    """
    plt = _plt()
    o = np.where(given, np.nan, order.astype(np.float64))
    counts = np.isfinite(o).sum(axis=0)
    mean = np.where(counts > 0, np.nansum(o, axis=0) / np.maximum(counts, 1), np.nan).reshape(shape)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#d9d9d9")  # cells that are always given
    top = vmax if vmax is not None else (float(np.nanmax(mean)) if np.isfinite(mean).any() else 1.0)
    im = ax.imshow(np.ma.masked_invalid(mean), cmap=cmap, vmin=1.0, vmax=max(top, 1.0 + 1e-9))
    for (i, j), v in np.ndenumerate(mean):
        label = labels[i * shape[1] + j] if labels is not None else None
        if label is not None and not np.isfinite(v):
            ax.text(j, i, label, ha="center", va="center", fontsize=10, fontweight="bold", color="k")
        elif label is not None:
            ink = "k" if v > 1.0 + 0.65 * (top - 1.0) else "w"  # readable on the bright end of viridis
            ax.text(j, i, f"{label}\n{v:.0f}", ha="center", va="center", fontsize=7, color=ink, linespacing=0.9)
        elif np.isfinite(v):
            ink = "k" if v > 1.0 + 0.65 * (top - 1.0) else "w"
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color=ink)
    if shape == (9, 9):
        for k in (2.5, 5.5):
            ax.axhline(k, color="k", lw=1.5)
            ax.axvline(k, color="k", lw=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="forward pass at which the cell was committed (grey: given)")
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


def line_chart(png: Path, curves: dict[str, list[tuple[float, float]]], flat: dict[str, float], title: str, *,
               xlabel: str, ylabel: str = "% solved", logx: bool = False) -> None:
    """Scores against a setting (a noise scale, a training step): one line per method (``curves``: name -> [(x,
    score)]), and horizontal lines for methods without that setting (``flat``: name -> score, e.g. vanilla)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, pts in curves.items():
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    for name, y in flat.items():
        ax.axhline(y, ls="--", color="gray", lw=1)
        ax.annotate(name, (0, y), xycoords=("axes fraction", "data"), xytext=(2, 2), textcoords="offset points",
                    fontsize=8, color="gray")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


# -- training curves -------------------------------------------------------------------------------------------------
X_AXES = {"samples": "samples seen", "step": "optimizer step", "seconds": "training time (s)",
          "flops": "training FLOPs"}


def metrics_file(path: str | os.PathLike) -> Path:
    """The metrics.jsonl of a run directory, a model directory, or the file itself."""
    p = Path(path)
    f = p / "metrics.jsonl" if p.is_dir() else p
    if not f.is_file():
        raise InputError(f"{path}: no metrics.jsonl there; give a run directory (runs/NAME), its model directory or "
                         "a metrics.jsonl file")
    return f


def read_metrics(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's training and validation records, each sorted by step with one record per step: a resumed run
    re-logs the steps after its checkpoint and the last record written wins. Validation records get
    ``train_seconds`` and ``train_flops`` interpolated from the training records when they lack them."""
    f = metrics_file(path)
    train: dict[int, dict[str, Any]] = {}
    val: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(read_text(f, "metrics file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{f}:{i}: not a JSON record ({exc.msg}); the metrics file is damaged, "
                             "delete that line to read the rest") from None
        if not isinstance(rec, dict) or "step" not in rec:
            continue  # run events ("start") carry no step
        _check_record(rec, f"{f}:{i}")
        if "loss" in rec:
            train[int(rec["step"])] = rec
        if any(k.startswith("val_") for k in rec):
            val[int(rec["step"])] = rec
    tr = [train[k] for k in sorted(train)]
    va = [dict(val[k]) for k in sorted(val)]
    for key in ("train_seconds", "train_flops"):
        timed = [r for r in tr if key in r]
        for r in va:  # between two logged values only: a run that began logging one later has none before that
            if timed and timed[0]["step"] <= r["step"] <= timed[-1]["step"]:
                r.setdefault(key, float(np.interp(r["step"], [t["step"] for t in timed], [t[key] for t in timed])))
    return tr, va


def run_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The resolved config of the run behind a metrics file: its last ``start`` event's, else the model directory's
    ``config.json`` beside it (or ``model/`` of a run directory); None when there is none."""
    f = metrics_file(path)
    config = None
    for line in read_text(f, "metrics file").splitlines():
        if '"start"' not in line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "start" and isinstance(rec.get("config"), dict):
            config = rec["config"]
    if config is not None:
        return config
    for cand in (f.parent / "config.json", f.parent / "model" / "config.json"):
        if cand.is_file():
            try:
                loaded = json.loads(read_text(cand, "model config"))
            except json.JSONDecodeError:
                continue
            if isinstance(loaded, dict):
                return loaded
    return None


def with_train_flops(label: str, path: str | os.PathLike, tr: list[dict[str, Any]],
                     va: list[dict[str, Any]]) -> None:
    """Give the records of a run logged before training FLOPs were counted (all of them, or the first part of a run
    resumed by a version that counts them) their ``train_flops``: derived from the samples seen and the run's
    recorded config (:func:`unmask.core.flops.config_train_flops`). A one-line InputError naming the run when they
    cannot be."""
    if all("train_flops" in r for r in tr + va):
        return
    from unmask.core.errors import UnmaskError
    from unmask.core.flops import config_train_flops

    name = label or str(path)
    config = run_config(path)
    if config is None:
        raise InputError(f"run '{name}': its metrics.jsonl has no train_flops and no config (start event or "
                         "config.json) to derive them from; plot it with --x samples")
    try:
        for r in tr + va:
            if "train_flops" in r:
                continue
            if "samples" not in r:
                raise InputError(f"its record of step {r['step']} has no samples")
            r["train_flops"] = config_train_flops(config, int(r["samples"]))
    except UnmaskError as exc:
        msg = " ".join(str(exc).split())
        raise InputError(f"run '{name}': its metrics.jsonl has no train_flops, and deriving them from its config "
                         f"failed: {msg}; plot it with --x samples") from None


def _check_record(rec: dict[str, Any], where: str) -> None:
    """A metrics record's numbers are numbers (a hand-edited or damaged file may hold anything)."""
    import math

    def bad(key: str, want: str) -> InputError:
        return InputError(f"{where}: '{key}' is {json.dumps(rec[key])[:40]}, not {want}; the metrics file is damaged, "
                          "fix or delete that line to read the rest")

    step = rec["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step", "a step number (an integer >= 0)")
    for key, value in rec.items():
        if key in ("loss", "samples", "train_seconds", "train_flops", "lr") or key.startswith("val_"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                if key == "loss" and isinstance(value, float):
                    continue  # a diverged run logs a nan/inf loss; the plot leaves the point out
                raise bad(key, "a finite number")


def _xkey(x: str) -> str:
    return {"seconds": "train_seconds", "flops": "train_flops"}.get(x, x)


def training_curves(png: Path, runs: Mapping[str, str | os.PathLike], x: str = "samples", title: str = "") -> None:
    """Training loss (left) and validation % solved per strategy (right) of one run or several overlaid
    (``runs``: label -> run directory / model directory / metrics.jsonl; an empty label for a single run), against
    samples seen, optimizer steps, training seconds or training FLOPs (``x``: a key of :data:`X_AXES`; runs logged
    before training FLOPs were counted get them derived, :func:`with_train_flops`)."""
    if x not in X_AXES:
        raise InputError(f"x axis {x!r} is unknown; use one of {', '.join(X_AXES)}")
    data = {label: read_metrics(path) for label, path in runs.items()}
    if x == "flops":
        for label, path in runs.items():
            with_train_flops(label, path, *data[label])
    plt = _plt()
    cells = any(k.endswith("_cells") for _, va in data.values() for r in va for k in r)  # a third panel
    fig, axes = plt.subplots(1, 3 if cells else 2, figsize=(16 if cells else 11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    xk = _xkey(x)
    for i, (label, (tr, va)) in enumerate(data.items()):
        pts = [r for r in tr if xk in r]
        if pts:
            axes[0].plot([r[xk] for r in pts], [r["loss"] for r in pts], lw=1, color=colors[i % len(colors)],
                         label=label or None)
        keys = sorted({k for r in va for k in r if k.startswith("val_") and not k.endswith("_cells")})
        for j, k in enumerate(keys):
            pts = [r for r in va if k in r and xk in r]
            name = f"{label}: {k[4:]}" if label else k[4:]
            color = colors[(i if len(data) > 1 else j) % len(colors)]
            ls = styles[j % len(styles)] if len(data) > 1 else "-"
            axes[1].plot([r[xk] for r in pts], [100 * r[k] for r in pts], marker="o", ms=3, label=name,
                         color=color, ls=ls)
            pts = [r for r in pts if k + "_cells" in r]
            if cells and pts:
                axes[2].plot([r[xk] for r in pts], [100 * r[k + "_cells"] for r in pts], marker="o", ms=3,
                             label=name, color=color, ls=ls)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (per token)")
    axes[1].set_ylabel("% solved (validation)")
    axes[1].set_ylim(0, 100)
    if cells:
        axes[2].set_ylabel("% of cells right (validation)")
        axes[2].set_ylim(0, 100)
    for ax in axes:
        ax.set_xlabel(X_AXES[x])
        if x == "flops":  # runs of different cost side by side: decades apart
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


def _best_curve(va: list[dict[str, Any]], x: str, cells: bool) -> list[tuple[float, float]]:
    """``(x, score)`` per validation record: the best strategy's % solved (or of cells) that record logged."""
    key = {"samples": "samples", "step": "step", "seconds": "train_seconds", "flops": "train_flops"}[x]
    out = []
    for r in va:
        scores = [v for k, v in r.items() if k.startswith("val_") and k.endswith("_cells") == cells]
        if scores and r.get(key) is not None:
            out.append((float(r[key]), max(scores)))
    return out


def _first_reach(curve: list[tuple[float, float]], level: float) -> float:
    """Where a curve first reaches ``level``, linearly interpolated between validation points."""
    for i, (x, y) in enumerate(curve):
        if y >= level:
            if i == 0:
                return x
            x0, y0 = curve[i - 1]
            return x0 + (x - x0) * (level - y0) / (y - y0)
    raise ValueError("level not reached")


def reach_table(runs: Mapping[str, str | os.PathLike], x: str = "flops") -> str:
    """How much training (``x``: a key of :data:`X_AXES`) each run needed to reach the same validation score: the
    highest score every run reached, % solved and % of cells (each record's best strategy), against the first run.
    Empty for fewer than two runs."""
    if len(runs) < 2:
        return ""
    data = {label: read_metrics(path) for label, path in runs.items()}
    if x == "flops":
        for label, path in runs.items():
            with_train_flops(label, path, *data[label])
    unit = {"samples": "samples", "step": "steps", "seconds": "s", "flops": "FLOPs"}[x]
    lines = []
    for cells, what in ((False, "solved"), (True, "of cells right")):
        curves = {label: _best_curve(va, x, cells) for label, (_, va) in data.items()}
        if not all(curves.values()):
            continue
        level = min(max(y for _, y in c) for c in curves.values())
        if level <= 0:
            lines.append(f"validation % {what}: not every run got above 0")
            continue
        reach = {label: _first_reach(c, level) for label, c in curves.items()}
        first = next(iter(reach.values()))
        parts = [f"{label} {format_flops(v) if x == 'flops' else f'{v:,.0f}'}"
                 + (f" ({v / first:.2f}x)" if first > 0 and i else "") for i, (label, v) in enumerate(reach.items())]
        lines.append(f"to reach {100 * level:.1f}% {what} (the best every run reached), {unit}: " + ", ".join(parts))
    return "\n".join(lines)


def curves_table(runs: Mapping[str, str | os.PathLike]) -> str:
    """Each run's validation records as text: step, samples, training time (and FLOPs where logged or derivable,
    :func:`with_train_flops`) and % solved per strategy (with % of cells right where logged)."""
    lines = []
    for label, path in runs.items():
        tr, va = read_metrics(path)
        try:
            with_train_flops(label, path, tr, va)
        except InputError:
            pass  # no config to derive them from: FLOPs where logged
        last = tr[-1] if tr else {}
        flops = f", {format_flops(last['train_flops'])} FLOPs" if "train_flops" in last else ""
        lines.append(f"{label or path}: {last.get('step', 0)} steps, {last.get('samples', 0)} samples, "
                     f"{last.get('train_seconds', 0.0) / 60:.1f} min of training{flops}")
        for r in va:
            vals = "  ".join(f"{k[4:]} {100 * v:.1f}" + (f" (cells {100 * r[k + '_cells']:.1f})"
                                                           if k + "_cells" in r else "")
                             for k, v in sorted(r.items()) if k.startswith("val_") and not k.endswith("_cells"))
            flops = f"  {format_flops(r['train_flops']):>8} FLOPs" if "train_flops" in r else ""
            lines.append(f"  step {r['step']:>6}  samples {r.get('samples', 0):>8}  "
                         f"{r.get('train_seconds', float('nan')) / 60:>6.1f} min{flops}  {vals}")
    return "\n".join(lines)
