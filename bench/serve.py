"""Load benchmark of ``unmask serve``: open-loop Poisson arrivals against the continuous and the static scheduler.

    python bench/serve.py                 # a few minutes on a 2-core CPU; writes results/serve.{md,json,png}
    python bench/serve.py --quick         # a smoke run (seconds)

For each mode (``--scheduler continuous``: a request joins the slot table at the next step; ``--scheduler
static``: collect up to B rows or wait W ms, decode that batch to completion, then take the next) it starts
``unmask serve`` on an ephemeral loopback port (torch on 1 thread), then

1. measures the saturation throughput: bursts of requests arriving far faster than the server can answer (the
   modes alternate, ``--sat-repeats`` bursts each; the table shows their mean);
2. offers Poisson loads at fractions of the *static* mode's saturation throughput (so both modes see the same
   request rates), each bounded in time, and records every request's latency (send to answer).

Per rate it reports throughput, p50 / p95 / p99 latency and the mean slot occupancy (rows per engine call / slots);
at saturation also the share of the decode worker's busy time spent in engine calls and strategy steps (from the
server's own counters, ``/v1/health``). Loopback only; every loop is bounded in count and time. Numbers only: it
never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from unmask.core.report import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def puzzles(model: str, n: int, seed: int) -> list[str]:
    """``n`` test-split puzzles of the model's task as the text its parser takes (81 digits, 0 = blank)."""
    from unmask.core.task import build_task
    from unmask.plugins.tasks.sudoku import tokens_to_digits

    cfg = json.loads((Path(model) / "config.json").read_text())
    task = build_task(cfg["task"])
    data = task.generate("test", n, seed)
    return ["".join(map(str, tokens_to_digits(row))) for row in data.inputs]


class Server:
    def __init__(self, model: str, scheduler: str, args: argparse.Namespace) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, "-m", "unmask.core.cli", "serve", "--model", model, "--threads", "1", "--port", "0",
               "--scheduler", scheduler, "--max-batch", str(args.max_batch), "--max-queue", "100000",
               "--static-wait-ms", str(args.static_wait_ms), "--steps", str(args.steps),
               "--strategy", args.strategy, "--request-timeout", "600"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                return
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise SystemExit(f"unmask serve ({scheduler}) did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def health(url: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:  # a fresh connection: pooled ones may have gone idle
        return (await client.get(f"{url}/v1/health")).json()


async def offer(url: str, texts: list[str], rate: float, seconds: float, seed: int, max_requests: int) -> dict:
    """Poisson arrivals at ``rate``/s for ``seconds`` (at most ``max_requests``); every latency is recorded."""
    import httpx

    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=max_requests)
    at = np.cumsum(gaps)
    at = at[at <= seconds] if at[-1] > seconds else at
    if len(at) == 0:
        at = np.array([0.0])
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        h0 = await health(url)
        lat: list[float] = []
        done_t: list[float] = []
        errors = 0
        t0 = time.perf_counter()

        async def one(k: int, when: float) -> None:
            nonlocal errors
            delay = t0 + when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            s = time.perf_counter()
            r = await client.post(f"{url}/v1/solve", json={"input": texts[k % len(texts)]})
            e = time.perf_counter()
            if r.status_code == 200:
                lat.append(e - s)
                done_t.append(e - t0)
            else:
                errors += 1

        await asyncio.gather(*(one(k, float(w)) for k, w in enumerate(at)))
        h1 = await health(url)
    lat_a = np.array(lat)
    d = {k: h1[k] - h0[k] for k in ("steps", "rows", "step_seconds", "busy_seconds")}
    span = max(done_t) - float(at[0]) if done_t else float("nan")
    return {
        "offered_rate": rate,
        "requests": int(len(at)),
        "answered": int(len(lat)),
        "errors": errors,
        "throughput": len(lat) / span if span > 0 else float("nan"),
        "p50": float(np.percentile(lat_a, 50)),
        "p95": float(np.percentile(lat_a, 95)),
        "p99": float(np.percentile(lat_a, 99)),
        "mean": float(lat_a.mean()),
        "occupancy": d["rows"] / max(d["steps"], 1) / h1["capacity"],
        "rows_per_step": d["rows"] / max(d["steps"], 1),
        "worker_step_share": d["step_seconds"] / d["busy_seconds"] if d["busy_seconds"] > 0 else float("nan"),
        "worker_busy_share": d["busy_seconds"] / span if span > 0 else float("nan"),
        "seconds": span,
    }


def row_md(mode: str, load: str, r: dict) -> str:
    return (f"| {mode} | {load} | {r['offered_rate']:.2f} | {int(r['answered'])} | {r['throughput']:.2f} | "
            f"{r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {100 * r['occupancy']:.0f}% | "
            f"{100 * r['worker_step_share']:.1f}% |")


def plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("continuous", "o-"), ("static", "s--")):
        rows = report["modes"][mode]["rates"]
        x = [r["offered_rate"] for r in rows]
        axes[0].plot(x, [r["p99"] for r in rows], style, label=f"{mode} p99")
        axes[0].plot(x, [r["p50"] for r in rows], style, alpha=0.45, label=f"{mode} p50")
        axes[1].plot(x, [r["throughput"] for r in rows], style, label=mode)
        sat = report["modes"][mode]["saturation"]["throughput"]
        axes[1].axhline(sat, ls=":", color=axes[1].lines[-1].get_color(), label=f"{mode} saturation {sat:.1f}/s")
    axes[0].set_xlabel("offered load (requests/s)")
    axes[0].set_ylabel("latency (s)")
    axes[0].set_title("latency against offered load")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("offered load (requests/s)")
    axes[1].set_ylabel("answered (requests/s)")
    axes[1].set_title("throughput")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"unmask serve, {report['model']} ({report['strategy']}, {report['steps']} steps), "
                 f"{report['cpu']}, 1 torch thread", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "sudoku-default"))
    p.add_argument("--strategy", default="margin")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--static-wait-ms", type=float, default=50.0)
    p.add_argument("--fractions", default="0.3,0.5,0.65,0.8", help="offered loads, as fractions of static saturation")
    p.add_argument("--seconds", type=float, default=25.0, help="arrival window per rate")
    p.add_argument("--sat-repeats", type=int, default=2, help="saturation bursts per mode (alternating modes)")
    p.add_argument("--burst", type=int, default=192, help="requests in the saturation burst")
    p.add_argument("--out", default=str(ROOT / "results" / "serve"))
    p.add_argument("--quick", action="store_true", help="smoke run: few requests, short windows")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.burst, args.fractions, args.sat_repeats = 3.0, 24, "0.5,0.8", 1
    fractions = [float(f) for f in args.fractions.split(",")]
    model = args.model
    t_all = time.perf_counter()
    texts = puzzles(model, 400, seed=2026)
    report: dict[str, Any] = {
        "cpu": cpu_model(), "threads": 1, "model": Path(model).name, "strategy": args.strategy, "steps": args.steps,
        "max_batch": args.max_batch, "static_wait_ms": args.static_wait_ms, "seconds_per_rate": args.seconds,
        "burst": args.burst, "fractions": fractions, "modes": {},
    }
    servers = {m: Server(model, m, args) for m in ("static", "continuous")}  # both up; only one is loaded at a time
    try:
        for mode in ("static", "continuous"):
            asyncio.run(offer(servers[mode].url, texts, 20.0, 1.0, 0, 8))  # warm-up (first parse, first calls)
            report["modes"][mode] = {"saturation_runs": [], "rates": []}
        # Saturation: bursts far above capacity, modes alternating (the machine's other load drifts); the mean of
        # the static bursts sets the offered rates.
        for rep in range(args.sat_repeats):
            for mode in ("static", "continuous"):
                sat = asyncio.run(offer(servers[mode].url, texts, 1000.0, 600.0, 1 + rep, args.burst))
                report["modes"][mode]["saturation_runs"].append(sat)
                print(f"{mode}: saturation {sat['throughput']:.2f} req/s; worker busy "
                      f"{100 * sat['worker_busy_share']:.0f}% of the time, {100 * sat['worker_step_share']:.1f}% of "
                      "that in engine calls + strategy steps", flush=True)
        for mode in ("static", "continuous"):
            runs = report["modes"][mode]["saturation_runs"]
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            report["modes"][mode]["saturation"] = mean
        base = report["modes"]["static"]["saturation"]["throughput"]
        for k, f in enumerate(fractions):
            for mode in ("static", "continuous"):
                r = asyncio.run(offer(servers[mode].url, texts, f * base, args.seconds, 100 + k, 100_000))
                r["fraction"] = f
                report["modes"][mode]["rates"].append(r)
                print(f"{mode:10s} {f:.2f} x static sat = {f * base:5.2f} req/s: {r['answered']} answered, "
                      f"{r['throughput']:.2f}/s, p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, p99 {r['p99']:.2f} s, "
                      f"occupancy {100 * r['occupancy']:.0f}%", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    report["seconds"] = time.perf_counter() - t_all
    cont, stat = report["modes"]["continuous"], report["modes"]["static"]
    report["p99_ratio"] = {f"{r['fraction']:.2f}": c["p99"] / r["p99"] for r, c in zip(stat["rates"], cont["rates"])}
    report["saturation_ratio"] = cont["saturation"]["throughput"] / stat["saturation"]["throughput"]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# unmask serve under open-loop Poisson load ({report['cpu']}, torch 1 thread)",
        "",
        f"Model {report['model']}, strategy {args.strategy}, {args.steps} steps; slot table {args.max_batch} rows; "
        f"static mode waits up to {args.static_wait_ms:g} ms for a full batch. Server and load generator share the "
        f"machine (loopback). Offered rates are fractions of the static mode's saturation throughput; "
        f"{args.seconds:g} s of arrivals per rate. Latency = send to answer, in seconds. Occupancy = mean rows per "
        f"engine call / slots. Engine share = decode worker's busy time in engine calls and strategy steps.",
        "",
        "| mode | load | offered req/s | answered | req/s | p50 | p95 | p99 | occupancy | engine share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("continuous", "static"):
        lines.append(row_md(mode, "saturation", report["modes"][mode]["saturation"]))
    for rs, rc in zip(stat["rates"], cont["rates"]):
        lines.append(row_md("continuous", f"{rc['fraction']:.2f} x sat", rc))
        lines.append(row_md("static", f"{rs['fraction']:.2f} x sat", rs))
    lines += [
        "",
        "continuous p99 / static p99: " + ", ".join(f"{k} x sat: {v:.2f}" for k, v in report["p99_ratio"].items()),
        f"continuous / static saturation throughput: {report['saturation_ratio']:.2f} (bursts of {args.burst}, req/s: "
        + "; ".join(f"{m} " + ", ".join(f"{r['throughput']:.2f}" for r in report["modes"][m]["saturation_runs"])
                    for m in ("continuous", "static")) + ")",
        f"decode worker at saturation (continuous): {100 * cont['saturation']['worker_step_share']:.1f}% of its busy "
        "time in engine calls and strategy steps",
        f"bench wall time {report['seconds']:.0f} s",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    plot(out.with_suffix(".png"), report)
    print("\n".join(lines))
    print(f"results: {out.with_suffix('.md')}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
