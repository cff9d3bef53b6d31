"""``--api-processes 2``: two HTTP processes on one port over one real vLLM engine core (issue 15).

What a user of the flag relies on: both processes serve, a client that leaves is aborted in the
engine whichever process it reached, ``/metrics`` counts every process, SIGTERM drains both
before the engine stops, and a dead engine stops everything (exit status 1, nothing left behind;
``start_server``'s teardown counts the processes).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from deepseek_serve.demo import build_demo_model
from tests.e2e.conftest import MODEL_NAME, LiveServer, start_server

pytestmark = pytest.mark.e2e

PROCESSES = ("--api-processes", "2")
OPEN = {"Authorization": "Bearer sk-e2e-open"}  # no limits, may read /metrics
LIMITED = {"Authorization": "Bearer sk-e2e-limited"}  # 5 requests an hour
KEYS = (
    "sk-e2e-open name=open requests=none metrics=yes\nsk-e2e-limited name=limited requests=5/hour\n"
)


def served_by(live: LiveServer, route: str = "/v1/completions") -> dict[str, int]:
    """Requests answered per API process, from the log's access lines (``[api N]``)."""
    counts: dict[str, int] = {}
    for match in re.finditer(rf"\[(api \d+)\] deepseek_serve\.access: POST {route} ", live.log()):
        counts[match[1]] = counts.get(match[1], 0) + 1
    return counts


def metric(live: LiveServer, name: str, labels: str = "") -> float:
    text = httpx.get(f"{live.base_url}/metrics", headers=OPEN, timeout=10).text
    pattern = rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$"
    total = 0.0
    for match in re.finditer(pattern, text, re.M):
        if labels in (match[1] or ""):
            total += float(match[2])
    return total


def complete(
    live: LiveServer, max_tokens: int = 8, headers: dict[str, str] = OPEN
) -> httpx.Response:
    # A connection of its own each time: the kernel picks the API process per connection.
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=60) as http:
        return http.post(
            "/v1/completions",
            json={"model": MODEL_NAME, "prompt": "def fib(n):", "max_tokens": max_tokens},
        )


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("api-processes")
    model = build_demo_model("demo", root / "tiny-coder")
    (root / "keys").write_text(KEYS)
    extra = (*PROCESSES, "--api-key-file", str(root / "keys"))
    yield from start_server(root, model, MODEL_NAME, extra=extra)


def test_both_processes_serve_and_metrics_count_every_process(two: LiveServer) -> None:
    names = {p.name() for p in psutil.Process(two.process.pid).children()}
    assert {"deepseek_serve::api 0", "deepseek_serve::api 1", "VLLM::EngineCore"} <= names, names
    route = 'route="/v1/completions",status="200"'
    before = metric(two, "deepseek_serve_requests_total", route)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: complete(two), range(32)))
    assert [r.status_code for r in answers] == [200] * 32
    assert all(r.json()["choices"][0]["text"] for r in answers)
    served = served_by(two)
    assert set(served) == {"api 0", "api 1"}, served  # the kernel spread the connections
    # Whichever process answers /metrics, it counts both processes' requests.
    for _ in range(4):
        assert metric(two, "deepseek_serve_requests_total", route) - before == 32


def test_a_client_that_leaves_is_aborted_whichever_process_it_reached(two: LiveServer) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": "def fib(n):",
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }

    def leave_early(_: int) -> int:
        with (
            httpx.Client(base_url=two.base_url, headers=OPEN, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=body) as r,
        ):
            assert r.status_code == 200
            for n, _line in enumerate(r.iter_lines()):
                if n >= 6:
                    return n  # closing the response drops the connection mid-stream
        return -1

    served_before = served_by(two)
    generated_before = metric(two, "vllm:generation_tokens_total")
    with ThreadPoolExecutor(8) as pool:
        assert all(n > 0 for n in pool.map(leave_early, range(8)))
    # The engine stops decoding for them: the token counter settles well short of 8 x 3000.
    deadline = time.monotonic() + 20
    last = -1.0
    while (now := metric(two, "vllm:generation_tokens_total")) != last:
        assert time.monotonic() < deadline, "the engine kept decoding for clients that left"
        last = now
        time.sleep(1.0)
    assert now - generated_before < 8 * 3000 / 2
    assert metric(two, "deepseek_serve_requests_in_flight") == 0
    left = {k: v - served_before.get(k, 0) for k, v in served_by(two).items()}
    assert all(left.get(name, 0) > 0 for name in ("api 0", "api 1")), left
    # and the engine goes on serving both processes
    with ThreadPoolExecutor(4) as pool:
        assert [r.status_code for r in pool.map(lambda _: complete(two), range(8))] == [200] * 8


def test_a_keys_request_limit_holds_across_both_processes(two: LiveServer) -> None:
    """``requests=5/hour``: five requests pass, whichever process each reaches, then 429 with
    Retry-After; not five per process."""
    before = served_by(two)
    answers = [complete(two, headers=LIMITED) for _ in range(16)]  # a connection each
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 11, [r.text for r in answers]
    assert int(answers[-1].headers["Retry-After"]) > 3000
    assert answers[-1].json()["error"]["code"] == "rate_limit_exceeded"
    # Both processes took some of the 16 (else this would prove nothing about sharing).
    got = {k: v - before.get(k, 0) for k, v in served_by(two).items()}
    assert got.get("api 0", 0) and got.get("api 1", 0), got
    assert complete(two).status_code == 200  # the other key is not touched


def stream_to_the_end(base_url: str, started: list[int]) -> dict[str, object]:
    body = {
        "model": MODEL_NAME,
        "prompt": "def fib(n):",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    finish, usage, done = None, None, False
    with (
        httpx.Client(base_url=base_url, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            started.append(1)
            for choice in chunk["choices"]:
                finish = choice["finish_reason"] or finish
            usage = chunk.get("usage") or usage
    return {"finish": finish, "usage": usage, "done": done}


def test_sigterm_drains_every_process_then_stops_the_engine(tmp_path: Path) -> None:
    model = build_demo_model("demo", tmp_path / "tiny-coder")
    for live in start_server(tmp_path, model, MODEL_NAME, extra=PROCESSES):
        started: list[int] = []
        with ThreadPoolExecutor(8) as pool:
            streams = [pool.submit(stream_to_the_end, live.base_url, started) for _ in range(8)]
            deadline = time.monotonic() + 60
            while len(started) < 8:  # every stream under way (chunks, not necessarily one each)
                assert time.monotonic() < deadline
                time.sleep(0.01)
            live.process.send_signal(signal.SIGTERM)
            results = [s.result(timeout=120) for s in streams]
        for result in results:
            assert result["finish"] == "length" and result["done"], result
            assert isinstance(result["usage"], dict) and result["usage"]["completion_tokens"] == 400
        assert live.process.wait(timeout=90) == 0
        log = live.log()
        drained = re.findall(r"\[(api \d)\] deepseek_serve\.http\.lifecycle: draining (\d+)", log)
        assert {name for name, _ in drained} == {"api 0", "api 1"}, drained
    # start_server's teardown: exit status 0, no engine process left, no exit-time errors


def test_a_dead_engine_stops_every_process(tmp_path: Path) -> None:
    model = build_demo_model("demo", tmp_path / "tiny-coder")
    for live in start_server(tmp_path, model, MODEL_NAME, extra=PROCESSES):
        live.expect_failure = True
        assert complete(live).status_code == 200
        children = psutil.Process(live.process.pid).children(recursive=True)
        core = next(p for p in children if p.name() == "VLLM::EngineCore")
        core.kill()
        code = live.process.wait(timeout=90)
        assert code == 1, live.log()[-3000:]
        assert "stopping the server" in live.log()
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [p.name() for p in alive]
