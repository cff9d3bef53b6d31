"""DeepSeek platform paths: FIM at ``/beta/completions`` (and ``/v1/beta/completions``) and chat at
``/chat/completions``, as Continue's ``deepseek`` provider calls them with a base URL that has
no ``/v1``. Usage on the beta route adds DeepSeek's prefix-cache counters."""

# The in-process fixtures of tests/app, imported rather than declared in a tests/compat conftest
# (other compat test files share this folder); the test arguments then shadow the imports.
# ruff: noqa: F811

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from tests.app.conftest import MakeClient, client, client_engine, make_client  # noqa: F401
from tests.fakes import FakeEngine

# Source: continuedev/continue packages/openai-adapters/src/apis/DeepSeek.ts (toFimBody)
CONTINUE_FIM = {
    "model": "demo",
    "prompt": "def fib(a):\n",
    "suffix": "\n    return fib(a-1) + fib(a-2)",
    "max_tokens": 4096,
    "temperature": 0.01,
    "top_p": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "stop": ["\n\n"],
    "stream": True,
}


def events(text: str) -> list[str]:
    frames = text.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[len("data: ") :] for f in frames]


@pytest.mark.parametrize("path", ["/beta/completions", "/v1/beta/completions"])
def test_continue_deepseek_fim_stream(
    make_client: MakeClient,
    v1_setup,
    path: str,  # type: ignore[no-untyped-def]
) -> None:
    client, engine = make_client(max_model_len=8192)
    r = client.post(path, json=CONTINUE_FIM, headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = events(r.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    # Continue reads chunk.choices[0].text without checking: every chunk has a choice
    assert all(c["choices"] and "text" in c["choices"][0] for c in chunks)
    # the prompt is the FIM prompt, DeepSeek's tokens, BOS once
    ids = engine.seen[-1][1]
    special = v1_setup.variant.special
    assert ids[:2] == [special.bos, special.fim_begin] and ids[-1] == special.fim_end
    assert engine.seen[-1][2].stop_token_ids == (special.eos,)


def test_beta_usage_has_deepseek_cache_counters(client: TestClient) -> None:
    body = {**CONTINUE_FIM, "stream": False, "max_tokens": 3}
    usage = client.post("/beta/completions", json=body).json()["usage"]
    assert usage["prompt_cache_hit_tokens"] == 0  # the fake engine has no prefix cache
    assert usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"] > 0
    plain = client.post("/v1/completions", json=body).json()["usage"]
    assert "prompt_cache_hit_tokens" not in plain  # OpenAI's usage shape elsewhere


def test_beta_stream_usage_chunk_only_when_asked(client: TestClient) -> None:
    body = {**CONTINUE_FIM, "max_tokens": 3, "stream_options": {"include_usage": True}}
    chunks = [json.loads(f) for f in events(client.post("/beta/completions", json=body).text)[:-1]]
    assert chunks[-1]["choices"] == [] and "prompt_cache_miss_tokens" in chunks[-1]["usage"]


def test_continue_deepseek_chat_without_v1(client: TestClient) -> None:
    # Source: continuedev/continue packages/openai-adapters/src/apis/OpenAI.ts (modifyChatBody
    # adds stream_options); the openai SDK posts to {apiBase}chat/completions
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": "Explain this code."}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = client.post("/chat/completions", json=body)
    assert r.status_code == 200
    frames = events(r.text)
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_alias_errors_answer_in_the_openai_shape(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    for path in ("/beta/completions", "/chat/completions"):
        r = client.post(path, json={"temperature": "hot"})
        assert r.status_code == 400 and set(r.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    assert not engine.seen


def test_deepseek_docs_fim_request_with_nulls(client: TestClient) -> None:
    # Source: api-docs.deepseek.com/api/create-completion (Create FIM Completion (Beta)): every
    # field but model and prompt is nullable; null means "not given"
    body = {"model": "demo", "prompt": "def fib(a):", "suffix": "    return fib(a-1) + fib(a-2)",
            "echo": False, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": 0,
            "max_tokens": 4, "stop": None, "stream": False, "stream_options": None,
            "temperature": 1, "top_p": 1}  # fmt: skip
    r = client.post("/beta/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert len(choice["logprobs"]["top_logprobs"]) == r.json()["usage"]["completion_tokens"]
    nulls = {k: None for k in ("echo", "frequency_penalty", "presence_penalty", "logprobs",
                               "stream", "temperature", "top_p", "n")}  # fmt: skip
    r = client.post("/beta/completions", json={**body, **nulls})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
    r = client.post("/beta/completions", json={**body, "prompt": None})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_beta_fits_max_tokens_to_the_window_where_v1_refuses(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    """Continue's deepseek provider asks for 4096 tokens (DeepSeek caps FIM output at 4K inside
    a 128K window): the platform route fits it to a smaller window; /v1 keeps vLLM's 400."""
    client, engine = client_engine  # a 256-token window
    body = {**CONTINUE_FIM, "stream": False}
    r = client.post("/beta/completions", json=body)
    assert r.status_code == 200, r.text
    assert engine.seen[-1][2].max_tokens == 256 - len(engine.seen[-1][1])
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
