"""``unmask serve`` on a text model: OpenAI completions and chat completions through the official ``openai``
client, answers equal to ``unmask generate``'s, per-request decoding options, concurrent clients, 4xx limits."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from text_models import build  # noqa: E402

from unmask.core.decoding.loop import decode  # noqa: E402
from unmask.core.decoding.runtime import open_engine  # noqa: E402
from unmask.core.serve import ServeOptions, Service, _uvicorn_server  # noqa: E402
from unmask.core.strategy import build_strategy  # noqa: E402
from unmask.core.task import build_task  # noqa: E402

WORDS = "the a cat dog sat on mat ran to home big small red blue one two three".split()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llada", tmp_path_factory.mktemp("serve") / "llada", seed=7)


@pytest.fixture(scope="module")
def server(model: Path) -> Any:
    engine = open_engine(model, "torch", threads=1)
    task = build_task(engine.config["task"], model=model)
    service = Service(engine, task, build_strategy({"name": "margin", "steps": 16}),
                      ServeOptions(max_batch=8, max_steps=64, max_tokens=48, max_inputs=16), model=str(model))
    srv = _uvicorn_server(service.app, "127.0.0.1", 0, 10.0, read_timeout=10.0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    yield f"http://127.0.0.1:{srv.port}", engine, task
    srv.should_exit = True
    thread.join(20)


def alone(engine: Any, task: Any, example: dict[str, Any], strategy: dict[str, Any]) -> str:
    """What decoding this one example by itself gives (``unmask generate``'s path)."""
    data = task.rows([example])
    res = decode(engine, torch.from_numpy(data.inputs), torch.from_numpy(data.given), build_strategy(strategy),
                 mask_id=task.mask_id, generator=torch.Generator(), lengths=torch.from_numpy(data.meta["length"]))
    return task.answer(res.tokens[0].numpy(), data.given[0])


def test_openai_client_completions_and_chat(server: Any) -> None:
    url, engine, task = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    out = client.completions.create(model="m", prompt="the cat sat on", max_tokens=12,
                                    extra_body={"strategy": "top_prob", "steps": 12, "block_length": 4})
    want = alone(engine, task, {"prompt": "the cat sat on", "gen_length": 12},
                 {"name": "top_prob", "steps": 12, "block_size": 4, "block_steps": "even"})
    assert out.choices[0].text == want and out.object == "text_completion"
    assert out.usage is not None and out.usage.completion_tokens <= 12
    assert out.choices[0].finish_reason in ("stop", "length")
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "big red dog"}],
                                          max_tokens=10)
    want = alone(engine, task, {"messages": [{"role": "user", "content": "big red dog"}], "gen_length": 10},
                 {"name": "margin", "steps": 16})
    assert chat.choices[0].message.content == want and chat.choices[0].message.role == "assistant"
    ins = client.completions.create(model="m", prompt="def x", suffix="return y", max_tokens=5)
    assert ins.choices[0].text == alone(engine, task, {"prefix": "def x", "suffix": "return y", "gen_length": 5},
                                        {"name": "margin", "steps": 16})


def test_32_concurrent_clients_with_different_lengths_and_options(server: Any) -> None:
    url, engine, task = server
    rng = torch.Generator().manual_seed(0)
    jobs = []
    for i in range(32):
        n = int(torch.randint(1, 9, (1,), generator=rng))
        prompt = " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (n,), generator=rng))
        gen = int(torch.randint(2, 20, (1,), generator=rng))
        strategy = ["margin", "top_prob", "confidence_threshold:tau=0.5"][i % 3]
        jobs.append((prompt, gen, strategy))

    def call(job: tuple[str, int, str]) -> str:
        prompt, gen, strategy = job
        r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": gen, "strategy": strategy,
                                                      "steps": gen}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(call, jobs))
    for (prompt, gen, strategy), text in zip(jobs, got, strict=True):
        name, _, opt = strategy.partition(":")
        spec: dict[str, Any] = {"name": name, "steps": gen}
        if opt:
            spec["tau"] = float(opt.split("=")[1])
        assert text == alone(engine, task, {"prompt": prompt, "gen_length": gen}, spec), (prompt, gen, strategy)


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"prompt": "the cat", "strategy": "nosuch"}, 400, "nosuch"),
    ({"prompt": "the cat", "steps": 65}, 400, "steps"),
    ({"prompt": "the cat", "max_tokens": 49}, 400, "max_tokens"),
    ({"prompt": " ".join(["the"] * 250), "max_tokens": 40}, 400, "context is 256"),
    ({"prompt": "the cat", "stream": True}, 400, "stream"),
    ({"prompt": "the cat", "n": 17}, 400, '"n"'),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, 'needs "prompt"'),
])
def test_refused_options_are_4xx_with_one_line(server: Any, body: dict[str, Any], status: int, needle: str) -> None:
    url, _, _ = server
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert "\n" not in msg and needle in msg, msg


def test_solve_route_takes_per_request_options_too(server: Any) -> None:
    url, _, _ = server
    r = httpx.post(f"{url}/v1/solve", json={"input": "the cat", "strategy": "top_prob", "steps": 200}, timeout=60)
    assert r.status_code == 400 and "at most 64" in r.json()["error"]
