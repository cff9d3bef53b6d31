"""IDE traffic against the real server over the real vLLM CPU engine: plugin-shaped /infill
bodies, repository context, sessions, the deployment guide's API through its Python client, and
hundreds of completions cancelled at random."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

from deepseek_serve.client import DeepSeekAPIError, DeepSeekClient
from tests.e2e.conftest import MODEL_NAME, LiveServer
from tests.plugins import vim_body, vscode_body

EOS = 32014
FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def test_llama_vim_and_vscode_bodies(server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/infill", json=vim_body(), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(vim_body()["response_fields"])
    assert body["timings/prompt_n"] > 0 and body["truncated"] is False
    r = httpx.post(f"{server.base_url}/infill", json=vscode_body(), timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["stop"] is True
    assert 1 <= body["tokens_predicted"] <= 8 and body["tokens_evaluated"] > 10
    assert body["timings"]["predicted_n"] == body["tokens_predicted"]
    assert body["stop_type"] in ("eos", "limit")
    server.wait_engine_idle()


def test_warmup_request_returns_at_once_with_empty_content(server: LiveServer) -> None:
    warm = {"input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0,
            "input_extra": [{"text": "x = 1\n" * 50, "filename": "a.py", "time": 1}],
            "samplers": [], "cache_prompt": True, "t_max_predict_ms": 1}  # fmt: skip
    r = httpx.post(f"{server.base_url}/infill", json=warm, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "" and r.json()["tokens_predicted"] == 0
    assert r.json()["tokens_evaluated"] > 100
    server.wait_engine_idle()


def test_infill_stream_and_packing_of_a_huge_context(server: LiveServer) -> None:
    big = "".join(f"value_{i} = compute({i})\n" for i in range(3000))  # ~30k tokens
    body = vscode_body(input_prefix=big, input_suffix=big, stream=True, n_predict=16,
                       input_extra=[{"filename": "big.py", "text": big}])  # fmt: skip
    with httpx.stream("POST", f"{server.base_url}/infill", json=body, timeout=120) as r:
        assert r.status_code == 200
        frames = [line for line in r.iter_lines() if line]
    chunks = [json.loads(f[len("data: ") :]) for f in frames]
    final = chunks[-1]
    assert final["stop"] is True and final["truncated"] is True
    assert final["tokens_dropped"] > 50000
    assert final["tokens_evaluated"] + 16 <= 4096
    assert all(c["stop"] is False for c in chunks[:-1]) and final["tokens_predicted"] >= 1


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input_extra": "oops"}, "input_extra"),
        ({"input_extra": [{"text": "x"}]}, "input_extra[0].filename"),
        ({"input_prefix": "", "input_suffix": "", "prompt": ""}, "input_prefix"),
        ({"n_predict": -7}, "n_predict"),
        ({"n_predict": 5000}, "n_predict"),  # no room left in the 4096-token window
    ],
)
def test_bad_infill_bodies(server: LiveServer, change: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.base_url}/infill", json=vscode_body(**change), timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert _infill_ok(server)


def test_completions_with_repository_context(server: LiveServer, client: OpenAI) -> None:
    extra = {"input_extra": [{"filename": "util.py", "text": "def helper():\n    return 1\n"}],
             "filename": "main.py", "logit_bias": {str(EOS): -100}}  # fmt: skip
    raw = client.completions.with_raw_response.create(
        model=MODEL_NAME, prompt="x = ", suffix="\n", max_tokens=3, extra_body=extra
    )
    done = raw.parse()
    assert raw.headers["x-context-tokens-dropped"] == "0"
    assert done.model_extra is not None and done.model_extra["tokens_dropped"] == 0
    expected = (
        f"{FIM_BEGIN}#util.py\ndef helper():\n    return 1\n\n#main.py\nx = {FIM_HOLE}\n{FIM_END}"
    )
    echo = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"prompt": expected, "max_tokens": 1, "temperature": 0},
        timeout=30,
    ).json()
    assert done.usage is not None and done.usage.prompt_tokens == echo["usage"]["prompt_tokens"]


def test_deployment_api_through_the_client(server: LiveServer) -> None:
    with DeepSeekClient(api_key="unused", base_url=server.base_url) as ds:
        done = ds.completion.create(prompt="def fib(n):\n", max_tokens=5, language="python")
        assert done.id.startswith("cmpl-") and done.object == "text_completion"
        assert done.usage is not None and done.usage.completion_tokens <= 5
        ins = ds.insertion.create(prefix="def add(a, b):\n    ", suffix="\n", max_tokens=4)
        assert ins.id.startswith("ins-") and ins.object == "text_insertion"
        chat = ds.chat.create(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert chat.id.startswith("chat-") and chat.choices[0].role == "assistant"
        chunks = list(ds.completion.create(prompt="import os\n", max_tokens=6, stream=True))
        assert {c.object for c in chunks} == {"text_completion"}
        assert len({c.id for c in chunks}) == 1
        assert sum(1 for c in chunks if c.text) <= 6
        with pytest.raises(DeepSeekAPIError) as info:
            ds.completion.create(prompt="x", language="cobol")
        assert info.value.status_code == 400 and info.value.param == "language"
        # leaving a stream early aborts it on the server
        stream = ds.completion.create(prompt="x", max_tokens=3000, stream=True)
        next(stream)
        stream.close()  # type: ignore[attr-defined]
    server.wait_engine_idle(timeout=5)


def test_a_new_request_of_the_session_aborts_the_older(server: LiveServer) -> None:
    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            headers = {"X-Session-Id": f"e2e-{time.time()}"}
            long = vscode_body(n_predict=2000, n_indent=0, t_max_predict_ms=0,
                               logit_bias={str(EOS): -100})  # fmt: skip
            old = asyncio.create_task(http.post("/infill", json=long, headers=headers))
            await asyncio.sleep(1.0)
            new = await http.post("/infill", json=vscode_body(n_predict=4), headers=headers)
            return await old, new

    old, new = asyncio.run(run())
    assert old.status_code == 409 and old.json()["error"]["code"] == 409
    assert new.status_code == 200
    server.wait_engine_idle(timeout=3)


def test_hundreds_of_completions_cancelled_at_random_leave_nothing_running(
    server: LiveServer,
) -> None:
    rng = random.Random(1234)
    long = {"model": MODEL_NAME, "max_tokens": 1500, "logit_bias": {str(EOS): -100}}

    def request(i: int) -> tuple[str, dict[str, Any], dict[str, str]]:
        kind = i % 4
        headers = {"X-Session-Id": f"load-{i % 7}"} if i % 3 == 0 else {}
        if kind == 0:
            body = vscode_body(n_predict=1500, n_indent=0, t_max_predict_ms=0)
            return "/infill", {**body, "logit_bias": [[EOS, -100]]}, headers
        if kind == 1:
            return "/v1/completions", {**long, "prompt": f"x{i}", "stream": True}, headers
        if kind == 2:
            return "/v1/completions", {**long, "prompt": f"y{i}", "suffix": "\n"}, headers
        return "/api/v1/insertion", {"prefix": f"z{i}", "suffix": "\n", "max_tokens": 1500,
                                     "stream": True}, headers  # fmt: skip

    async def one(http: httpx.AsyncClient, i: int, gate: asyncio.Semaphore) -> str:
        path, body, headers = request(i)
        async with gate:
            task = asyncio.create_task(_consume(http, path, body, headers))
            done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, 0.6))
            if not done:
                task.cancel()  # the connection is dropped mid-request
                await asyncio.gather(task, return_exceptions=True)
                return "cancelled"
            error = task.exception()
            return str(task.result()) if error is None else type(error).__name__

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as http:
            gate = asyncio.Semaphore(48)
            return await asyncio.gather(*(one(http, i, gate) for i in range(300)))

    before = _metric_totals(server)
    outcomes = asyncio.run(run())
    assert outcomes.count("cancelled") > 150, outcomes
    assert set(outcomes) <= {"cancelled", "200", "409"}, set(outcomes)  # 409: superseded
    waited = server.wait_engine_idle(timeout=30)
    counts = {k: outcomes.count(k) for k in ("cancelled", "200", "409")}
    print(f"\n300 requests: {counts}; engine idle {waited:.2f}s after the last one")
    assert _infill_ok(server)
    # The engine decodes some tokens for requests the server has already dropped (their aborts
    # reach it a step or more later): counted, and a part of what it decoded.
    after = _metric_totals(server)
    abandoned = after[ABANDONED] - before[ABANDONED]
    decoded = after[GENERATED] - before[GENERATED]
    print(f"abandoned tokens: {abandoned:.0f} of {decoded + abandoned:.0f} decoded")
    assert 0 < abandoned < decoded


ABANDONED = "deepseek_serve_engine_abandoned_tokens_total"
GENERATED = "vllm:generation_tokens_total"


def _metric_totals(server: LiveServer) -> dict[str, float]:
    """The two counters, summed over their label sets."""
    totals = dict.fromkeys((ABANDONED, GENERATED), 0.0)
    for line in httpx.get(f"{server.base_url}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def _consume(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> int:
    async with http.stream("POST", path, json=body, headers=headers) as r:
        async for _ in r.aiter_bytes():
            pass
        return r.status_code


def _infill_ok(server: LiveServer) -> bool:
    r = httpx.post(f"{server.base_url}/infill", json=vscode_body(), timeout=60)
    return r.status_code == 200


def test_infill_runs_through_eot_and_stops_at_end_of_sentence(server: LiveServer) -> None:
    """The served checkpoint is an instruct one: <|EOT|> must not end a completion."""
    eot = vscode_body(n_predict=5, n_indent=0, logit_bias={"32021": 100}, temperature=0.0)
    out = httpx.post(f"{server.base_url}/infill", json=eot, timeout=60).json()
    # vLLM leaves special tokens out of the text; the 5 tokens ran through <|EOT|>
    assert (out["tokens_predicted"], out["stop_type"]) == (5, "limit")
    eos = {**eot, "logit_bias": [[EOS, 100]]}
    out = httpx.post(f"{server.base_url}/infill", json=eos, timeout=60).json()
    assert (out["content"], out["stop_type"], out["tokens_predicted"]) == ("", "eos", 1)


def test_continue_autocomplete_body(server: LiveServer) -> None:
    """Continue's vllm provider renders DeepSeek's FIM template itself (its deepseek template
    and stop list) and streams /v1/completions."""
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    body = {
        "model": MODEL_NAME,
        "prompt": f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}",
        "max_tokens": 16,
        "temperature": 0.01,
        "stop": [FIM_BEGIN, FIM_HOLE, FIM_END, "//", "<｜end▁of▁sentence｜>"],
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all("error" not in json.loads(line[6:]) for line in lines[:-1])
    # the template's special texts became the FIM ids: same prompt as the server's own FIM
    url = f"{server.base_url}/v1/completions"
    theirs = httpx.post(url, json={**body, "stream": False, "max_tokens": 1}, timeout=60).json()
    ours = httpx.post(url, json={"prompt": prefix, "suffix": suffix, "max_tokens": 1}, timeout=60)
    assert theirs["usage"]["prompt_tokens"] == ours.json()["usage"]["prompt_tokens"]
