"""Ollama's API as its clients use it, against the real server over real vLLM: Continue's
``ollama`` provider, Tabby through ollama-rs, twinny and llm-ls. Each test names the client file
whose request and parsing it reproduces. The clients keep the model name they used with Ollama."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.clients import (
    continue_ollama_chat,
    continue_ollama_complete,
    continue_ollama_fim,
    continue_ollama_show,
    continue_read_ndjson,
    continue_reads_fim_from_show,
    deepseek_fim,
    llmls_ollama,
    llmls_read_ollama,
    tabby_ollama_generate,
    tabby_ollama_show,
    tabby_read_ollama,
    tabby_reads_tags,
    twinny_ollama_fim,
    twinny_read,
)
from tests.e2e.conftest import LiveServer

OLLAMA_NAME = "deepseek-coder:6.7b-base"  # what an Ollama user has configured
PREFIX = "import os\n\ndef list_files(path):\n    "
SUFFIX = "\n\nif __name__ == '__main__':\n    list_files('.')\n"


def _post(server: LiveServer, path: str, headers: dict[str, str], body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=120)


def test_continue_ollama_provider(server: LiveServer) -> None:
    # Source: continuedev/continue core/llm/llms/Ollama.ts (ensureModelInfo, _streamFim,
    # _streamComplete, _streamChat, listModels)
    r = _post(server, *continue_ollama_show(OLLAMA_NAME))
    assert r.status_code == 200, r.text
    fim_enabled, num_ctx = continue_reads_fim_from_show(r.json())
    assert fim_enabled and num_ctx == 4096
    names = [m["name"] for m in httpx.get(f"{server.base_url}/api/tags").json()["models"]]
    assert names == ["tiny-coder:latest"]

    r = _post(server, *continue_ollama_fim(OLLAMA_NAME, PREFIX, SUFFIX, num_predict=12))
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    pieces = continue_read_ndjson(r.text)
    final = json.loads(r.text.split("\n")[-2])
    assert final["done"] is True and final["done_reason"] in ("stop", "length")
    assert final["eval_count"] <= 12 and final["model"] == OLLAMA_NAME
    assert pieces[-1] == "" and all(isinstance(p, str) for p in pieces)

    r = _post(server, *continue_ollama_complete(OLLAMA_NAME, deepseek_fim(PREFIX, SUFFIX), 8))
    assert r.status_code == 200 and continue_read_ndjson(r.text)[-1] == ""
    # The FIM prompt rendered by the client and the server's own FIM template are one prompt:
    # same prompt tokens either way (raw is used as is, no chat template).
    assert json.loads(r.text.split("\n")[-2])["prompt_eval_count"] == final["prompt_eval_count"]

    messages = [{"role": "user", "content": "Write a function that adds two numbers."}]
    r = _post(server, *continue_ollama_chat(OLLAMA_NAME, messages, stream=True))
    contents = continue_read_ndjson(r.text, field="message")  # every line has a message
    one = _post(server, *continue_ollama_chat(OLLAMA_NAME, messages, stream=False)).json()
    assert one["message"]["role"] == "assistant" and one["done"] is True
    assert one["eval_count"] <= 32 and len(contents) >= 2
    server.wait_engine_idle()


def test_tabby_through_ollama_rs(server: LiveServer) -> None:
    # Source: TabbyML/tabby crates/ollama-api-bindings/src/{model.rs,completion.rs} and
    # pepperoni21/ollama-rs generate_stream (each transport chunk parsed on its own)
    name = tabby_reads_tags(httpx.get(f"{server.base_url}/api/tags").json())
    r = _post(server, *tabby_ollama_show(name))
    assert r.status_code == 200 and "not found" not in r.text
    path, raw = tabby_ollama_generate(name, deepseek_fim(PREFIX, SUFFIX), num_predict=16)
    with httpx.stream("POST", f"{server.base_url}{path}", content=raw, timeout=120) as resp:
        assert resp.status_code == 200  # no Content-Type was sent: the body is JSON anyway
        chunks = list(resp.iter_raw())
    text = tabby_read_ollama(chunks)
    lines = b"".join(chunks).decode().split("\n")[:-1]
    assert json.loads(lines[-1])["done"] is True
    assert text == "".join(json.loads(line)["response"] for line in lines)
    server.wait_engine_idle()


def test_twinny_ollama_fim(server: LiveServer) -> None:
    # Source: twinnydotdev/twinny src/extension/provider-options.ts (ollama body, no raw: the
    # prompt already holds DeepSeek's FIM tokens) and src/extension/utils.ts (data.response)
    prompt = deepseek_fim(PREFIX, SUFFIX)
    r = _post(server, *twinny_ollama_fim(OLLAMA_NAME, prompt, num_predict=10))
    assert r.status_code == 200, r.text
    final = json.loads(r.text.split("\n")[-2])
    # No chat template around a FIM prompt: it is as many tokens as the FIM prompt itself.
    fim = _post(server, *continue_ollama_fim(OLLAMA_NAME, PREFIX, SUFFIX, num_predict=1))
    assert final["prompt_eval_count"] == json.loads(fim.text.split("\n")[-2])["prompt_eval_count"]
    assert twinny_read(r.text, "response") == "".join(continue_read_ndjson(r.text))
    server.wait_engine_idle()


def test_llm_ls_ollama_backend(server: LiveServer) -> None:
    # Source: huggingface/llm-ls crates/llm-ls/src/backend.rs (ollama: one object, response or
    # error string). llm.nvim's default body sets no num_predict, so generation runs to a stop
    # or the window's end; on CPU the test sets one, as a user's request_body may.
    path, headers, body = llmls_ollama(OLLAMA_NAME, deepseek_fim(PREFIX, SUFFIX))
    body["options"]["num_predict"] = 8  # a user's request_body setting; keeps CPU time short
    text = llmls_read_ollama(_post(server, path, headers, body).json())
    assert isinstance(text, str)
    bad = {**body, "options": {"temperature": "warm"}}
    with pytest.raises(LookupError, match=r"options\.temperature"):
        llmls_read_ollama(_post(server, path, headers, bad).json())
    server.wait_engine_idle()
