"""Requests editor plugins send to the OpenAI routes, with fields of other servers' dialects:
unknown fields are ignored and logged once per request (as vLLM does), known ones stay strict,
and llama.cpp's / Ollama's fields with a meaning we support are honoured."""

# The in-process fixtures of tests/app, imported rather than declared in a tests/compat conftest
# (other compat test files share this folder); the test arguments then shadow the imports.
# ruff: noqa: F811

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.app.conftest import MakeClient, client, client_engine, make_client  # noqa: F401
from tests.fakes import FakeEngine

SYSTEM = "You are an expert coder."
CHAT = [{"role": "user", "content": "Rename x to y."}]


def ignored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "ignored" in r.getMessage()
    ]


def test_llama_vscode_chat_edit_with_cache_prompt(
    client_engine: tuple[TestClient, FakeEngine], caplog: pytest.LogCaptureFixture
) -> None:
    # Source: ggml-org/llama.vscode src/llama-server.ts (chat-edit: getChatCompletion)
    client, engine = client_engine
    body = {
        "messages": [{"role": "system", "content": SYSTEM}, *CHAT],
        "stream": False,
        "cache_prompt": True,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_tokens": 4,
    }
    with caplog.at_level(logging.WARNING):
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    options = engine.seen[-1][2]
    assert (options.temperature, options.top_p) == (0.8, 0.95)
    (line,) = ignored_lines(caplog)  # once per request, naming the field
    assert "/v1/chat/completions" in line and line.endswith("ignored: cache_prompt")


def test_llama_vim_instruct_warm_up_is_answered_empty(
    client_engine: tuple[TestClient, FakeEngine], caplog: pytest.LogCaptureFixture
) -> None:
    # Source: ggml-org/llama.vim autoload/llama.vim (llama#inst: the warm-up request)
    client, engine = client_engine
    body = {
        "id_slot": 3,
        "messages": [{"role": "system", "content": "You are a text-editing assistant."}],
        "samplers": [],
        "n_predict": 0,
        "stream": False,
        "cache_prompt": True,
        "response_fields": [""],
        "model": "",
    }
    with caplog.at_level(logging.WARNING):
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"]["completion_tokens"] == 0 and out["usage"]["prompt_tokens"] > 0
    assert engine.seen[-1][2].max_tokens == 1  # the prompt was processed (prefix cache warm)
    (line,) = ignored_lines(caplog)
    assert line.endswith("ignored: cache_prompt, id_slot, response_fields, samplers")


def test_llama_vim_instruct_stream_honours_min_p_and_temperature(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    # Source: ggml-org/llama.vim autoload/llama.vim (llama#inst_send)
    client, engine = client_engine
    body = {
        "id_slot": 0,
        "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
        "min_p": 0.1,
        "temperature": 0.1,
        "samplers": ["min_p", "temperature"],
        "stream": True,
        "cache_prompt": True,
        "model": "",
        "n_predict": 3,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    options = engine.seen[-1][2]
    assert (options.min_p, options.temperature, options.max_tokens) == (0.1, 0.1, 3)


def test_twinny_openai_compatible_options_are_honoured(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    # Source: twinnydotdev/twinny src/extension/provider-options.ts (ollama-style options
    # for the "openai-compatible" provider)
    client, engine = client_engine
    body = {
        "model": "demo",
        "messages": CHAT,
        "stream": True,
        "keep_alive": "5m",
        "options": {"temperature": 0.2, "num_predict": 5, "stop": ["\n\n"], "mirostat": None,
                    "repeat_penalty": 1.1, "top_k": 40, "seed": 7, "num_ctx": 2048},
    }  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    o = engine.seen[-1][2]
    assert (o.temperature, o.max_tokens, o.stop) == (0.2, 5, ("\n\n",))
    assert (o.repetition_penalty, o.top_k, o.seed) == (1.1, 40, 7)


def test_openai_fields_win_over_foreign_ones(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {
        "prompt": "x",
        "max_tokens": 2,
        "n_predict": 9,
        "temperature": 0.5,
        "repetition_penalty": 1.3,
        "repeat_penalty": 1.9,
        "options": {"temperature": 1.5, "num_predict": 7, "stop": ["a"]},
        "stop": ["b"],
    }
    assert client.post("/v1/completions", json=body).status_code == 200
    o = engine.seen[-1][2]
    assert (o.max_tokens, o.temperature, o.repetition_penalty, o.stop) == (2, 0.5, 1.3, ("b",))


def test_n_predict_on_completions(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    assert client.post("/v1/completions", json={"prompt": "x", "n_predict": 4}).status_code == 200
    assert engine.seen[-1][2].max_tokens == 4
    # -1: no limit (llama.cpp), so the room left in the window rather than the default 16
    assert client.post("/v1/completions", json={"prompt": "x", "n_predict": -1}).status_code == 200
    assert engine.seen[-1][2].max_tokens > 16
    warm = client.post("/v1/completions", json={"prompt": "x", "n_predict": 0}).json()
    assert warm["choices"][0]["text"] == "" and warm["usage"]["completion_tokens"] == 0


def test_llm_ls_leaked_parameters_key(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    # Source: huggingface/llm-ls crates/llm-ls/src/backend.rs (the global "parameters" default
    # leaks into openai requests)
    body = {"prompt": "x", "model": "demo", "stream": False, "temperature": 0.2, "top_p": 0.95,
            "parameters": {"max_new_tokens": 60, "temperature": 0.2}}  # fmt: skip
    with caplog.at_level(logging.WARNING):
        r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert ignored_lines(caplog)[0].endswith("ignored: parameters")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "cache_prompt": True, "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "id_slot": 0, "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "n_predict": -5}, "n_predict"),
        ({"prompt": "x", "options": {"temperature": 9, "mirostat": 0}}, "options.temperature"),
        ({"prompt": "x", "options": {"stop": [""]}}, "options.stop"),
        ({"prompt": "x", "repeat_penalty": "1"}, "repeat_penalty"),
    ],
)
def test_known_fields_stay_strict_beside_unknown_ones(
    client_engine: tuple[TestClient, FakeEngine], body: dict[str, Any], param: str
) -> None:
    client, engine = client_engine
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and not engine.seen


def test_nested_unknown_fields_are_dropped_and_named(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {
        "prompt": "x",
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True, "chunk_size": 3},
        "input_extra": [{"filename": "a.py", "text": "y = 1\n", "time": 12}],
    }
    with caplog.at_level(logging.WARNING):
        r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert '"usage"' in r.text  # the known part of stream_options still applies
    (line,) = ignored_lines(caplog)
    assert line.endswith("ignored: input_extra[0].time, stream_options.chunk_size")


@pytest.mark.parametrize(
    "path", ["/v1/completions", "/api/v1/completion", "/beta/completions", "/v1/beta/completions"]
)
def test_every_dialect_ignores_unknown_fields(client: TestClient, path: str) -> None:
    r = client.post(path, json={"prompt": "x", "max_tokens": 2, "frobnicate": 1})
    assert r.status_code == 200, r.text


def test_tools_are_refused_not_ignored(client: TestClient) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "tools": [tool]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "tools": [], "max_tokens": 1})
    assert r.status_code == 200
