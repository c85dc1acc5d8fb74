"""``unmask serve`` against real servers on ephemeral loopback ports: answers equal ``unmask solve``'s, 64
concurrent clients, every error case, a client that goes away, an engine that fails, graceful shutdown.

Most tests share one ``unmask serve`` subprocess on the committed model (with few steps, to stay fast); the
failure cases run the same app in-process (uvicorn in a thread) around a wrapped engine.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from unmask.core.cli import main as cli_main  # noqa: E402
from unmask.core.decoding.loop import decode  # noqa: E402
from unmask.core.decoding.runtime import open_engine  # noqa: E402
from unmask.core.serve import ServeOptions, Service, _uvicorn_server  # noqa: E402
from unmask.core.strategy import build_strategy  # noqa: E402
from unmask.core.task import build_task  # noqa: E402

MODEL = Path(__file__).parents[2] / "models" / "sudoku-default"
STEPS = 12
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def puzzles(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct puzzles with unique solutions: relabelled digits and rows / columns permuted within bands of
    one puzzle (every such transform keeps a Sudoku valid and its solution unique)."""
    rng = np.random.default_rng(seed)
    base = np.array([0 if c == "." else int(c) for c in PUZZLE]).reshape(9, 9)
    out: set[str] = set()
    while len(out) < n:
        relabel = np.concatenate([[0], rng.permutation(9) + 1])
        rows = np.concatenate([b * 3 + rng.permutation(3) for b in range(3)])
        cols = np.concatenate([b * 3 + rng.permutation(3) for b in range(3)])
        g = relabel[base][rows][:, cols]
        out.add("".join("." if d == 0 else str(d) for d in g.ravel()))
    return sorted(out)


def start_server(*extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "unmask.core.cli", "serve", "--model", str(MODEL), "--threads", "1", "--port", "0",
         "--steps", str(STEPS), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--max-batch", "8", "--max-queue", "80", "--max-body", "16384")
    yield url
    stop(proc)


def post(url: str, body: object, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/solve", json=body, timeout=kw.pop("timeout", 60), **kw)


def solve_cli(capsys: pytest.CaptureFixture, puzzle: str, *extra: str) -> tuple[str, int]:
    """What ``unmask solve`` prints: the answer grid and the forward passes."""
    capsys.readouterr()  # drop what came before
    cli_main(["solve", "--model", str(MODEL), "--steps", str(STEPS), "--threads", "1", *extra, puzzle])
    lines = capsys.readouterr().out.splitlines()
    k = next(i for i, line in enumerate(lines) if re.search(r"\d+ forward passes", line))  # the status line
    return "\n".join(lines[:k]), int(re.search(r"(\d+) forward passes", lines[k]).group(1))  # type: ignore[union-attr]


# -- the shared subprocess server ---------------------------------------------------------------------------------
def test_answers_equal_unmask_solve(server, capsys):
    for p in puzzles(2, seed=1):
        answer, nfe = solve_cli(capsys, p)
        r = post(server, {"input": p, "trace": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["answer"] == answer and body["nfe"] == nfe
        assert set(body) >= {"answer", "tokens", "solved", "valid", "unique", "nfe", "scores", "order"}
        assert len(body["tokens"]) == 81 and len(body["order"]) == 81
        assert max(body["order"]) == nfe and body["unique"] is True
        assert [o == 0 for o in body["order"]] == [c != "." for c in p]  # given cells were never committed


def test_batch_form_and_health_and_metrics(server):
    ps = puzzles(3, seed=2)
    r = post(server, {"inputs": ps})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for p, res in zip(ps, results):
        assert res == post(server, {"input": p}).json()
    h = httpx.get(f"{server}/v1/health", timeout=60).json()
    assert h["status"] == "ok" and h["task"] == "sudoku" and h["capacity"] == 8 and h["strategy"]["name"] == "margin"
    m = httpx.get(f"{server}/metrics", timeout=60).text
    for name in ("unmask_requests_total{status=\"200\"}", "unmask_queue_depth", "unmask_slots_occupied",
                 "unmask_forward_passes_total", "unmask_request_latency_seconds_bucket"):
        assert name in m, name


def test_64_concurrent_clients(server):
    ps = puzzles(64, seed=3)
    ref = {}
    engine = open_engine(MODEL, "torch")
    task = build_task(engine.config["task"])
    strat = build_strategy({"name": "margin", "steps": STEPS})
    for p in ps:  # each alone, as unmask solve decodes it
        d = task.parse(p)
        res = decode(engine, torch.from_numpy(d.inputs), torch.from_numpy(d.given), strat, mask_id=task.mask_id,
                     generator=torch.Generator().manual_seed(0))
        ref[p] = (task.format(res.tokens[0].numpy()), int(res.nfe[0]))
    barrier = threading.Barrier(64)

    def client(p: str) -> tuple[str, httpx.Response]:
        with httpx.Client(timeout=120) as c:
            barrier.wait()
            return p, c.post(f"{server}/v1/solve", json={"input": p})

    with cf.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(client, ps))
    assert len(answers) == 64
    for p, r in answers:
        assert r.status_code == 200, r.text
        assert (r.json()["answer"], r.json()["nfe"]) == ref[p]


@pytest.mark.parametrize(
    "content, status, pattern",
    [
        (b'{"input": ', 400, r"not valid JSON"),
        (b"[1, 2]", 400, r"invalid request"),
        (b'{"input": "' + PUZZLE.encode() + b'", "colour": "red"}', 400, r"unknown field `colour`"),
        (b'{"input": 81}', 400, r"invalid request: Expected `str \| null`"),
        (b'{"input": "123"}', 400, r"puzzle has 3 cells"),
        (b'{"inputs": ["' + PUZZLE.encode() + b'", "12"]}', 400, r"inputs\[1\]: puzzle has 2 cells"),
        (b'{"input": "a", "inputs": ["b"]}', 400, r"exactly one of"),
        (b'{"inputs": []}', 400, r"empty"),
        (b'{"input": "' + PUZZLE.encode() + b'", "seed": -1}', 400, r"invalid request: Expected `int` >= 0"),
        (b'{"input": "' + b"1" * 20000 + b'"}', 413, r"over 16384 bytes"),
    ],
)
def test_bad_requests_get_4xx_with_one_line_errors(server, capsys, content, status, pattern):
    r = httpx.post(f"{server}/v1/solve", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert re.search(pattern, err) and "\n" not in err
    if pattern.startswith("puzzle has 3"):  # the same message the CLI gives
        assert cli_main(["solve", "--model", str(MODEL), "123"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {err}"


def test_unknown_route_and_method(server):
    r = httpx.get(f"{server}/v1/nothing", timeout=60)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{server}/v1/solve", timeout=60)
    assert r.status_code == 405 and "error" in r.json()


def test_full_queue_is_503_with_retry_after(server):
    r = post(server, {"inputs": puzzles(81, seed=4)})  # more rows than the queue (--max-queue 80) can ever hold
    assert r.status_code == 400 and "at most 80 per request" in r.json()["error"]
    with cf.ThreadPoolExecutor(1) as pool:
        # 64 rows through 8 slots: 56 wait in the queue; the client gives up after a while (freeing the rows) or,
        # on a fast machine, gets its answer first: either way the server must be fine afterwards
        def first_request() -> None:
            try:
                assert post(server, {"inputs": puzzles(64, seed=5)}, timeout=1.5).status_code == 200
            except httpx.ReadTimeout:
                pass

        first = pool.submit(first_request)
        deadline = time.monotonic() + 5
        while httpx.get(f"{server}/v1/health", timeout=60).json()["queue"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = post(server, {"inputs": puzzles(30, seed=6)})  # 56 + 30 > 80
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "queue full" in r.json()["error"]
        first.result()
    assert post(server, {"input": PUZZLE}).status_code == 200  # and the server is fine afterwards


def test_client_that_goes_away_stops_costing_compute(server):
    def rows() -> float:
        m = re.search(r"^unmask_row_forward_passes_total (\S+)$", httpx.get(f"{server}/metrics", timeout=60).text, re.M)
        return float(m.group(1))  # type: ignore[union-attr]

    start = rows()
    with pytest.raises(httpx.ReadTimeout):  # 64 rows through 8 slots take ~10x longer than this
        post(server, {"inputs": puzzles(64, seed=5)}, timeout=0.1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = httpx.get(f"{server}/v1/health", timeout=60).json()
        if h["live"] == 0 and h["queue"] == 0:
            break
        time.sleep(0.02)
    assert h["live"] == 0 and h["queue"] == 0, h
    before = rows()
    time.sleep(0.3)
    assert rows() == before  # nothing is being decoded for the client that left
    assert before - start < 64 * STEPS / 2  # and most of its work never ran
    assert "unmask_cancelled_rows_total" in httpx.get(f"{server}/metrics", timeout=60).text


# -- in-process servers around a wrapped engine -------------------------------------------------------------------
class Wrapped:
    """The real engine, optionally failing or slow."""

    def __init__(self, engine, delay: float = 0.0):
        self.engine, self.delay, self.fail = engine, delay, False
        for a in ("vocab_size", "seq_len", "max_batch", "device", "config"):
            setattr(self, a, getattr(engine, a))

    def __call__(self, tokens):
        if self.fail:
            raise RuntimeError("simulated engine failure")
        if self.delay:
            time.sleep(self.delay)
        return self.engine(tokens)


@pytest.fixture(scope="module")
def engine_task():
    engine = open_engine(MODEL, "torch")
    return engine, build_task(engine.config["task"])


class InProcess:
    def __init__(self, engine, task, strategy, shutdown_timeout: float = 10.0, **opts):
        self.service = Service(engine, task, strategy, ServeOptions(**opts))
        self.server = _uvicorn_server(self.service.app, "127.0.0.1", 0, shutdown_timeout,
                                      read_timeout=self.service.opts.read_timeout)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return f"http://127.0.0.1:{self.server.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def test_engine_error_fails_that_step_and_the_server_keeps_serving(engine_task):
    engine, task = engine_task
    eng = Wrapped(engine)
    with InProcess(eng, task, build_strategy({"name": "margin", "steps": STEPS})) as url:
        eng.fail = True
        r = post(url, {"inputs": puzzles(2, seed=6)})
        assert r.status_code == 500 and "simulated engine failure" in r.json()["error"]
        eng.fail = False
        r = post(url, {"input": PUZZLE})
        assert r.status_code == 200 and r.json()["solved"] is not None
        h = httpx.get(f"{url}/v1/health", timeout=60).json()
        assert h["status"] == "ok" and h["errors"] == 1
        assert 'unmask_requests_total{status="500"} 1.0' in httpx.get(f"{url}/metrics", timeout=60).text


def test_request_timeout_is_504_and_frees_its_slots(engine_task):
    engine, task = engine_task
    eng = Wrapped(engine, delay=0.05)
    with InProcess(eng, task, build_strategy({"name": "margin", "steps": STEPS}), request_timeout=0.2) as url:
        r = post(url, {"input": PUZZLE})  # 12 steps x 50 ms > 0.2 s
        assert r.status_code == 504 and "0.2 s" in r.json()["error"]
        time.sleep(0.2)
        assert httpx.get(f"{url}/v1/health", timeout=60).json()["live"] == 0


def test_seeded_random_strategy_equals_solve_with_that_seed(engine_task, capsys):
    engine, task = engine_task
    p = puzzles(1, seed=7)[0]
    strat = build_strategy({"name": "vanilla", "steps": STEPS})
    with InProcess(engine, task, strat) as url:
        with cf.ThreadPoolExecutor(4) as pool:  # other requests decode beside it in the shared table
            others = [pool.submit(post, url, {"input": q}) for q in puzzles(3, seed=8)]
            r = post(url, {"input": p, "seed": 5})
            assert all(o.result().status_code == 200 for o in others)
    assert r.status_code == 200
    answer, nfe = solve_cli(capsys, p, "--strategy", "vanilla", "--seed", "5")
    assert (r.json()["answer"], r.json()["nfe"]) == (answer, nfe)


def test_static_scheduler_gives_the_same_answers(engine_task):
    engine, task = engine_task
    ps = puzzles(6, seed=9)
    strat = build_strategy({"name": "margin", "steps": STEPS})
    res = {}
    for mode in ("continuous", "static"):
        with InProcess(engine, task, strat, scheduler=mode, static_wait_ms=20, max_batch=4) as url:
            with cf.ThreadPoolExecutor(6) as pool:
                res[mode] = [r.json()["answer"] for r in pool.map(lambda q: post(url, {"input": q}), ps)]
    assert res["continuous"] == res["static"]


# -- shutdown ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_requests_in_flight_and_exits_0(sig):
    proc, url = start_server("--max-batch", "4")
    try:
        ps = puzzles(12, seed=10)
        with cf.ThreadPoolExecutor(12) as pool:
            futs = [pool.submit(post, url, {"input": p}) for p in ps]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # wait until the worker is busy and others are queued
                h = httpx.get(f"{url}/v1/health", timeout=60).json()
                if h["live"] > 0 and h["queue"] > 0:
                    break
                time.sleep(0.005)
            proc.send_signal(sig)
            codes = [f.result().status_code for f in futs]
        assert codes == [200] * 12
        assert proc.wait(30) == 0
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"{url}/v1/health", timeout=2)
        err = proc.stderr.read() if proc.stderr else ""
        assert "shutting down" in err and "stopped" in err and "Traceback" not in err
    finally:
        stop(proc)


# -- hostile and broken clients, start-up errors ---------------------------------------------------------------------
def _closed(sock, deadline: float) -> bool:
    """The server closed ``sock`` (after an optional answer) before ``deadline``."""
    import socket

    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_slow_clients_are_cut_off_by_the_read_timeout(engine_task):
    """50 connections that send their request head, or their body, too slowly are closed after --read-timeout;
    the server keeps answering everyone else."""
    import socket

    engine, task = engine_task
    with InProcess(engine, task, build_strategy({"name": "margin", "steps": STEPS}), read_timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        socks = []
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                s.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\n")  # the head, never finished
            else:
                s.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 500\r\n\r\n{\"input\": ")  # the body, never finished
            socks.append(s)
        t0 = time.monotonic()
        assert post(url, {"input": PUZZLE}).status_code == 200
        deadline = t0 + 6.0
        assert all(_closed(s, deadline) for s in socks)
        assert time.monotonic() - t0 < 6.0
        for s in socks:
            s.close()
        assert post(url, {"input": PUZZLE}).status_code == 200


def test_client_hanging_up_mid_body_is_no_server_error(engine_task, caplog):
    """A client that closes its connection half-way through the body is counted as gone (499), not as a 500 with a
    traceback in the log."""
    import logging
    import socket

    engine, task = engine_task
    caplog.set_level(logging.ERROR)
    with InProcess(engine, task, build_strategy({"name": "margin", "steps": STEPS})) as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"input\": \"53..")
            time.sleep(0.05)
            s.close()
        time.sleep(0.3)
        m = httpx.get(f"{url}/metrics", timeout=60).text
        assert 'status="500"' not in m and 'unmask_requests_total{status="499"}' in m
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_past_the_shutdown_timeout_the_client_gets_json(engine_task):
    """A request still decoding when --shutdown-timeout runs out gets a JSON 503, not uvicorn's plain-text 500."""
    engine, task = engine_task
    eng = Wrapped(engine, delay=0.3)  # 12 steps x 0.3 s: far past the 0.5 s shutdown timeout
    srv = InProcess(eng, task, build_strategy({"name": "margin", "steps": STEPS}), shutdown_timeout=0.5)
    with srv as url:
        with cf.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(post, url, {"input": PUZZLE})
            time.sleep(0.5)
            srv.server.should_exit = True
            r = fut.result()
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
    assert "shut down" in r.json()["error"]


def test_health_names_the_model_without_its_path_and_cross_origin_posts_are_refused(server):
    h = httpx.get(f"{server}/v1/health", timeout=60).json()
    assert h["model"] == "sudoku-default" and "/" not in h["model"]
    body = f'{{"input": "{PUZZLE}"}}'
    r = httpx.post(f"{server}/v1/solve", content=body, timeout=60,
                   headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = httpx.post(f"{server}/v1/solve", content=body, timeout=60, headers={"Origin": "null"})
    assert r.status_code == 403
    r = httpx.post(f"{server}/v1/solve", content=body, timeout=60, headers={"Origin": server})  # the same origin
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("args, pattern", [
    (["--static-wait-ms", "nan"], r"--static-wait-ms must be a number of milliseconds >= 0, got nan"),
    (["--request-timeout", "inf"], r"--request-timeout must be a number of seconds > 0"),
    (["--read-timeout", "0"], r"--read-timeout must be"),
    (["--host", "no-such-host.invalid"], r"cannot listen on no-such-host.invalid:0: .*; check --host"),
    (["--host", "256.1.1.1"], r"cannot listen on 256.1.1.1:0"),
    (["--port", "TAKEN"], r"cannot listen on 127.0.0.1:\d+: .*in use.*; choose another --port"),
])
def test_serve_start_up_errors_are_one_line_and_exit_2(capsys, args, pattern):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    args = [str(taken.getsockname()[1]) if a == "TAKEN" else a for a in args]
    try:
        code = cli_main(["serve", "--model", str(MODEL), "--threads", "1", "--port", "0", *args])
    finally:
        taken.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and re.search(pattern, err[-1]), err
    assert not any("Traceback" in e or "ERROR" in e for e in err)


def test_a_200_answer_never_carries_changed_givens(engine_task):
    """Rows whose given cells come back changed (an engine or strategy that writes into its inputs) fail with a
    500 naming both plugins, never a 200."""
    engine, task = engine_task
    srv = InProcess(engine, task, build_strategy({"name": "margin", "steps": STEPS}))
    table = srv.service.worker.table
    original = table.step
    corrupt = {"on": True}
    first = next(i for i, c in enumerate(PUZZLE) if c != ".")

    def step(*a, **kw):
        fin = original(*a, **kw)
        if fin is not None and corrupt["on"]:
            fin.tokens[:, first] = (fin.tokens[:, first] % 9) + 1  # one given cell changed
        return fin

    table.step = step
    with srv as url:
        r = post(url, {"input": PUZZLE})
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert "changed 1 given cell" in err and "'margin'" in err and type(engine).__name__ in err
        corrupt["on"] = False
        r = post(url, {"input": PUZZLE})
        assert r.status_code == 200
        given = task.parse(PUZZLE)
        tokens = np.asarray(r.json()["tokens"])
        assert (tokens[given.given[0]] == given.inputs[0][given.given[0]]).all()
