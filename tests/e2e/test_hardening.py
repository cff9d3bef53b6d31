"""A server with API keys over the real CPU engine: auth through the official client, rate
limits, engine ports, a fault-and-load test; and the SIGTERM drain (on a server of its own)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest

from deepseek_serve.demo import build_demo_model
from tests.e2e.conftest import MODEL_NAME, LiveServer, start_server

NAME = "tiny-secured"
LOAD_KEY = "sk-load-0123456789"
LIMITED_KEY = "sk-limited-abcdef"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("e2e-secured")
    keys = root / "keys.txt"
    keys.write_text(
        f"{LOAD_KEY} name=load requests=none metrics=yes\n"
        f"{LIMITED_KEY} name=limited requests=3/minute\n"
    )
    model = build_demo_model("demo", root / "model")
    extra = ("--api-key-file", str(keys), "--shutdown-timeout", "20")
    yield from start_server(root, model, NAME, extra=extra)


def auth(key: str = LOAD_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_for(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def test_official_client_needs_a_valid_key(secured: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(secured, "sk-wrong").completions.create(model=NAME, prompt="x", max_tokens=2)
    assert info.value.status_code == 401
    done = client_for(secured, LOAD_KEY).completions.create(model=NAME, prompt="x", max_tokens=2)
    assert done.usage is not None and done.usage.completion_tokens == 2
    assert httpx.get(f"{secured.base_url}/health").status_code == 200


def test_rate_limit_through_the_official_client(secured: LiveServer) -> None:
    client = client_for(secured, LIMITED_KEY)
    for _ in range(3):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as info:
        client.models.list()
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_metrics_has_ours_and_vllms(secured: LiveServer) -> None:
    assert httpx.get(f"{secured.base_url}/metrics").status_code == 401
    # a client key without metrics=yes may not see every tenant's traffic
    assert httpx.get(f"{secured.base_url}/metrics", headers=auth(LIMITED_KEY)).status_code == 403
    text = httpx.get(f"{secured.base_url}/metrics", headers=auth()).text
    assert 'deepseek_serve_requests_total{route="/v1/completions",status="200"}' in text
    assert "deepseek_serve_time_to_first_token_seconds_bucket" in text
    assert "vllm:num_requests_running" in text


def generation_tokens(text: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith("vllm:generation_tokens_total{")]
    assert len(lines) == 1, lines
    return float(lines[0].rsplit(" ", 1)[1])


def test_lean_engine_metrics_count_what_the_engine_did(secured: LiveServer) -> None:
    """The server's engine stat logger replaces vLLM's (its families, not vLLM's sixty)."""
    before = httpx.get(f"{secured.base_url}/metrics", headers=auth()).text
    client_for(secured, LOAD_KEY).completions.create(
        model=NAME, prompt="def f(", max_tokens=5, extra_body={"ignore_eos": True}
    )
    after = httpx.get(f"{secured.base_url}/metrics", headers=auth()).text
    assert generation_tokens(after) - generation_tokens(before) == 5
    assert any(
        ln.startswith("vllm:request_success_total{") and 'finished_reason="length"' in ln
        for ln in after.splitlines()
    )
    assert "vllm:kv_cache_usage_perc" in after
    assert "vllm:inter_token_latency_seconds" not in after  # per token: ours has it by route


def test_engine_ports_are_bound_to_loopback_only(secured: LiveServer) -> None:
    tree = [psutil.Process(secured.process.pid)]
    tree += tree[0].children(recursive=True)
    pids = {p.pid for p in tree}
    listening = [
        c for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids
    ]
    assert listening, "found no listening sockets at all: the check is blind"
    exposed = [c.laddr for c in listening if c.laddr.ip not in ("127.0.0.1", "::1")]
    assert not exposed, f"bound beyond loopback: {exposed}"


# --- fault and load ----------------------------------------------------------------------------

MALFORMED: list[tuple[bytes, str]] = [
    (b"{not json", "application/json"),
    (b'{"prompt": "x", "max_tokens": -3}', "application/json"),
    (b'{"prompt": "x", "temperature": "hot"}', "application/json"),
    (b'{"prompt": [999999999]}', "application/json"),
    (b'{"prompt": "x", "unknown_field": 1, "n": 0}', "application/json"),  # unknown ignored
    (b'"just a string"', "application/json"),
    (b"prompt=x", "application/x-www-form-urlencoded"),
    (b'{"prompt": "\\ud800"}', "application/json"),
]


async def one_request(
    http: httpx.AsyncClient, base: str, kind: str, rng: random.Random
) -> tuple[str, str]:
    """Returns (kind, outcome)."""
    url = f"{base}/v1/completions"
    if kind == "malformed":
        body, ctype = rng.choice(MALFORMED)
        r = await http.post(url, content=body, headers={**auth(), "Content-Type": ctype})
        ok = r.status_code == 400 and set(r.json()["error"]) >= {"message", "type"}
        return kind, "refused" if ok else f"unexpected {r.status_code}"
    body = {
        "model": NAME,
        "prompt": f"def task_{rng.randrange(10**6)}(",
        "max_tokens": rng.randint(8, 40),
        "stream": True,
        "ignore_eos": True,
    }
    async with http.stream("POST", url, json=body, headers=auth()) as r:
        if r.status_code != 200:
            return kind, f"status {r.status_code}"
        frames = 0
        async for line in r.aiter_lines():
            if not line:
                continue
            frames += 1
            if kind == "disconnect" and frames >= rng.randint(1, 4):
                return kind, "left"  # closing the stream drops the connection mid-response
            if line == "data: [DONE]":
                return kind, "complete"
            if "error" in json.loads(line.removeprefix("data: ")):
                return kind, "error frame: " + line[:200]
    return kind, "no [DONE]"


async def load_round(
    base: str, rng: random.Random, requests: int, concurrency: int
) -> Counter[str]:
    kinds = rng.choices(["valid", "disconnect", "malformed"], weights=[70, 15, 15], k=requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def bounded(kind: str) -> tuple[str, str]:
            async with sem:
                return await one_request(http, base, kind, rng)

        results = await asyncio.gather(*(bounded(k) for k in kinds))
    return Counter(f"{kind}: {outcome}" for kind, outcome in results)


def server_rss_mib(server: LiveServer) -> float:
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def test_fault_and_load(secured: LiveServer, figures: list[str]) -> None:
    """Rounds of streaming requests at concurrency 48: 15% of clients leave mid-stream, 15% send
    malformed bodies. Every valid request completes, the engine ends up holding nothing, and
    the server's memory stops growing once warm."""
    rng = random.Random(7)
    rss = [server_rss_mib(secured)]
    for round_no in range(4):
        start = time.monotonic()
        outcomes = asyncio.run(load_round(secured.base_url, rng, requests=200, concurrency=48))
        took = time.monotonic() - start
        idle_after = secured.wait_engine_idle(timeout=10)
        rss.append(server_rss_mib(secured))
        figures.append(
            f"fault+load round {round_no}: {dict(outcomes)} in {took:.1f}s; engine idle after "
            f"{idle_after:.2f}s; server RSS {rss[-1]:.1f} MiB"
        )
        bad = {
            k: v
            for k, v in outcomes.items()
            if k.split(": ")[1] not in ("complete", "left", "refused")
        }
        assert not bad, bad
        assert outcomes["valid: complete"] > 100
    # the first round warms caches and pools; after it, memory must stay flat
    growth = rss[-1] - rss[1]
    rounded = [round(x, 1) for x in rss]
    figures.append(f"server RSS by round (MiB): {rounded}; growth after warm-up {growth:.1f}")
    assert growth < 40, f"server memory grew {growth:.1f} MiB across warm rounds: {rss}"
    text = httpx.get(f"{secured.base_url}/metrics", headers=auth()).text
    assert 'deepseek_serve_requests_aborted_total{reason="client_disconnect"}' in text
    assert "deepseek_serve_requests_in_flight 0.0" in text


def test_sigterm_drains(own_server: LiveServer) -> None:
    """SIGTERM while a stream runs. The stream finishes, new requests get 503, the process
    exits 0 and (checked by the fixture) leaves no engine process behind."""
    secured = own_server
    frames: list[str] = []
    started = threading.Event()

    def stream() -> None:
        body = {
            "model": MODEL_NAME,
            "prompt": "x",
            "max_tokens": 300,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        with httpx.stream("POST", f"{secured.base_url}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    frames.append(line)
                    started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(30)
    secured.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while httpx.get(f"{secured.base_url}/health").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.get(f"{secured.base_url}/health").json() == {"status": "draining"}
    r = httpx.post(f"{secured.base_url}/v1/completions", json={"model": MODEL_NAME, "prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    thread.join(60)
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert all("error" not in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 300  # it ran to the end
    assert secured.process.wait(timeout=60) == 0
    assert "draining 1 request(s)" in secured.log()
