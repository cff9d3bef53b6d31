"""Editor plugins and DeepSeek-platform clients on the OpenAI routes, against the real server
over the real vLLM engine: each client's exact request, read the way its code reads it. (The
in-process replays in test_openai_unknown_fields.py and test_deepseek_api.py check the sampling
options and logs these requests produce.)"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.e2e.conftest import LiveServer

CHAT = [{"role": "user", "content": "Rename x to y."}]


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, as the plugins split it."""
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def post(server: LiveServer, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=120)


def test_llama_vscode_chat_edit(server: LiveServer) -> None:
    # Source: ggml-org/llama.vscode src/llama-server.ts (getChatCompletion: cache_prompt and
    # llama.cpp sampling fields beside OpenAI's; reads choices[0].message.content)
    body = {"messages": [{"role": "system", "content": "You are an expert coder."}, *CHAT],
            "stream": False, "cache_prompt": True, "temperature": 0.8, "top_p": 0.95,
            "max_tokens": 8}  # fmt: skip
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["choices"][0]["message"]["content"], str)


def test_llama_vim_instruct_warm_up_then_stream(server: LiveServer) -> None:
    # Source: ggml-org/llama.vim autoload/llama.vim (llama#inst: a warm-up with n_predict 0,
    # then the stream; it reads choices[0].delta.content of each data: line until [DONE])
    warm = {"id_slot": 0, "messages": [{"role": "system", "content": "You edit text."}],
            "samplers": [], "n_predict": 0, "stream": False, "cache_prompt": True,
            "response_fields": [""], "model": ""}  # fmt: skip
    r = post(server, "/v1/chat/completions", warm)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == ""
    assert r.json()["usage"]["completion_tokens"] == 0
    send = {"id_slot": 0, "messages": [{"role": "system", "content": "You edit text."}, *CHAT],
            "min_p": 0.1, "temperature": 0.1, "samplers": ["min_p", "temperature"],
            "stream": True, "cache_prompt": True, "model": "", "n_predict": 6}  # fmt: skip
    r = post(server, "/v1/chat/completions", send)
    data = sse_data(r.text)
    assert r.status_code == 200 and data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    # llama.vim reads choices[0].delta of every chunk and stops at the one with a finish_reason
    assert all("delta" in c["choices"][0] for c in chunks)
    finish = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finish[-1] in ("stop", "length") and finish[:-1] == [None] * (len(finish) - 1)
    usage = post(server, "/v1/chat/completions", {**send, "stream": False}).json()["usage"]
    assert 1 <= usage["completion_tokens"] <= 6  # n_predict honoured


def test_twinny_openai_compatible_provider(server: LiveServer) -> None:
    # Source: twinnydotdev/twinny src/extension/provider-options.ts (Ollama-style "options" for
    # the openai-compatible provider; empty Authorization header; reads delta.content)
    body = {"model": "tiny-coder", "messages": CHAT, "stream": True, "keep_alive": "5m",
            "options": {"temperature": 0.2, "num_predict": 5}}  # fmt: skip
    r = post(server, "/v1/chat/completions", body, Authorization="")
    data = sse_data(r.text)
    assert r.status_code == 200 and data[-1] == "[DONE]"
    tokens = sum(1 for d in data[:-1] if json.loads(d)["choices"][0]["delta"].get("content"))
    assert tokens <= 5  # options.num_predict honoured


def test_continue_deepseek_provider_fim_and_chat(server: LiveServer) -> None:
    # Source: continuedev/continue packages/openai-adapters/src/apis/DeepSeek.ts (FIM: POST
    # {apiBase}beta/completions, max_tokens 4096 by default, reads choices[0].text of every
    # chunk without checking) and OpenAI.ts (chat at {apiBase}chat/completions, no /v1)
    fim = {"model": "tiny-coder", "prompt": "def fib(a):\n",
           "suffix": "\n    return fib(a-1) + fib(a-2)", "max_tokens": 4096,
           "temperature": 0.01, "top_p": 1, "frequency_penalty": 0, "presence_penalty": 0,
           "stop": ["\n\n"], "stream": True}  # fmt: skip
    r = post(server, "/beta/completions", fim, Authorization="Bearer undefined")
    data = sse_data(r.text)
    assert r.status_code == 200, r.text  # 4096 fitted to the demo's 4096-token window
    assert data[-1] == "[DONE]"
    assert all("text" in json.loads(d)["choices"][0] for d in data[:-1])
    chat = {"model": "tiny-coder", "messages": CHAT, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    r = post(server, "/chat/completions", chat)
    chunks = [json.loads(d) for d in sse_data(r.text)[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 4
