"""vLLM's behaviours and request extensions that clients and tools notice, replayed over the fake
engine. Shapes follow vLLM 0.32's own source (vllm/entrypoints/openai/completion/protocol.py,
chat_completion/protocol.py, serve/tokenize/protocol.py)."""

# The in-process fixtures of tests/app, imported rather than declared in a tests/compat conftest
# (other compat test files share this folder); the test arguments then shadow the imports.
# ruff: noqa: F811

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from deepseek_serve.engine import EngineOutput, SequenceDelta, StructuredOutput
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import MakeClient, client, client_engine, make_client  # noqa: F401
from tests.fakes import FakeEngine

CHAT = [{"role": "user", "content": "hi"}]


def events(text: str) -> list[dict[str, Any]]:
    frames = text.split("\n\n")[:-1]
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f[len("data: ") :]) for f in frames[:-1]]


def test_logprobs_zero_returns_the_sampled_token(client: TestClient) -> None:
    # The OpenAI Python client's completions.create(logprobs=0) (openai/openai-python
    # src/openai/types/completion_create_params.py); vLLM: entry 0 is the sampled token
    lp = client.post(
        "/v1/completions", json={"prompt": "x", "max_tokens": 3, "logprobs": 0}
    ).json()["choices"][0]["logprobs"]
    assert len(lp["top_logprobs"]) == 3
    for token, value, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        assert top == {token: value}


def test_continuous_usage_role_chunk_counts_no_completion_tokens(client: TestClient) -> None:
    body = {"messages": CHAT, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    chunks = events(client.post("/v1/chat/completions", json=body).text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["usage"]["completion_tokens"] == 0
    used = [c["usage"]["completion_tokens"] for c in chunks]
    assert used == sorted(used) and used[-1] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [5, -1]}, "prompt[1]"),
        ({"prompt": [[5], [7, -2]]}, "prompt[1][1]"),
        ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids[0]"),
        ({"prompt": "x", "allowed_token_ids": [-3]}, "allowed_token_ids[0]"),
    ],
)
def test_negative_token_ids_are_refused_as_such(
    client_engine: tuple[TestClient, FakeEngine], body: dict[str, Any], param: str
) -> None:
    client, engine = client_engine
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and ">= 0" in error["message"] and not engine.seen


def test_tokenize_and_detokenize(client: TestClient, v1_setup: TokenizerSetup) -> None:
    # vLLM: vllm/entrypoints/serve/tokenize/protocol.py
    r = client.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert r == {
        "count": 3,
        "max_model_len": 256,
        "tokens": [32013, 17535, 1835],
        "token_strs": ["<｜begin▁of▁sentence｜>", "Hello", "Ġworld"],
    }
    r = client.post("/tokenize", json={"prompt": "Hello world", "add_special_tokens": False})
    assert r.json()["tokens"] == [17535, 1835]
    back = client.post("/detokenize", json={"tokens": [32013, 17535, 1835]}).json()
    assert back["prompt"] == "<｜begin▁of▁sentence｜>Hello world"


def test_tokenize_messages_equals_the_chat_prompt(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    for extra in ({}, {"add_generation_prompt": False}, {"continue_final_message": True}):
        messages = [*CHAT, {"role": "assistant", "content": "def f("}]
        tok = client.post("/tokenize", json={"messages": messages, **extra}).json()
        chat = {"messages": messages, "max_tokens": 1, **extra}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert tok["tokens"] == engine.seen[-1][1] and tok["count"] == len(tok["tokens"])
    r = client.post(
        "/tokenize",
        json={"messages": CHAT, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"


def test_llama_cpp_tokenize_form(client: TestClient) -> None:
    # llama.vscode calls /tokenize (ggml-org/llama.vscode src/llama-server.ts); llama.cpp's
    # tools/server/server.cpp handle_tokenize: {"content", "add_special", "with_pieces"}
    r = client.post("/tokenize", json={"content": "Hello world"}).json()
    assert r == {"tokens": [17535, 1835]}
    r = client.post("/tokenize", json={"content": "Hello", "with_pieces": True}).json()
    assert r == {"tokens": [{"id": 17535, "piece": "Hello"}]}
    assert client.post("/detokenize", json={"tokens": [17535]}).json()["content"] == "Hello"


@pytest.mark.parametrize("model", ["", None])
def test_empty_or_missing_model_is_the_served_one(client: TestClient, model: str | None) -> None:
    body = {"prompt": "x", "max_tokens": 1, **({} if model is None else {"model": model})}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.json()["model"] == "demo"
    assert client.post("/v1/completions", json={**body, "model": "gpt-4"}).status_code == 404


def test_system_fingerprint(client: TestClient) -> None:
    full = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).json()
    fingerprint = full["system_fingerprint"]
    assert fingerprint.startswith("deepseek_serve-")
    chat = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}).json()
    assert chat["system_fingerprint"] == fingerprint
    # streams: only on the last chunk (the usage chunk when there is one), as vLLM
    body = {"prompt": "x", "max_tokens": 3, "stream": True}
    chunks = events(client.post("/v1/completions", json=body).text)
    assert [c.get("system_fingerprint") for c in chunks] == [None, None, fingerprint]
    body["stream_options"] = {"include_usage": True}
    chunks = events(client.post("/v1/completions", json=body).text)
    assert [c.get("system_fingerprint") for c in chunks] == [None, None, None, fingerprint]


def test_return_token_ids(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {"prompt": "Hello world", "max_tokens": 3, "return_token_ids": True}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["prompt_token_ids"] == [32013, 17535, 1835] == engine.seen[-1][1]
    assert len(choice["token_ids"]) == 3
    assert engine.tokenizer.decode(choice["token_ids"]) == choice["text"]
    chunks = events(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert chunks[0]["choices"][0]["prompt_token_ids"] == [32013, 17535, 1835]
    assert "prompt_token_ids" not in chunks[1]["choices"][0]
    streamed = [i for c in chunks for i in c["choices"][0]["token_ids"]]
    assert streamed == choice["token_ids"]
    chat = client.post(
        "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2, "return_token_ids": True}
    ).json()
    assert chat["prompt_token_ids"] == engine.seen[-1][1]
    assert len(chat["choices"][0]["token_ids"]) == 2


def test_streamed_token_ids_include_tokens_without_text_yet(
    client_engine: tuple[TestClient, FakeEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token that ends inside a UTF-8 character has no text yet (vLLM's delta text is ""):
    its id goes out with the choice's next chunk, so the stream carries every id that usage
    counts. (They were dropped: 2 ids streamed for 3 tokens.)"""
    client, _ = client_engine

    async def generate(
        self: FakeEngine, request_id: str, prompt: list[int], options: Any
    ) -> AsyncIterator[EngineOutput]:
        yield EngineOutput([SequenceDelta(0, "", [1000])], finished=False)
        yield EngineOutput([SequenceDelta(0, "\u00e9", [1001])], finished=False)
        yield EngineOutput([SequenceDelta(0, "x", [1002], finish_reason="length")], True)

    monkeypatch.setattr(FakeEngine, "generate", generate)
    body = {"prompt": "x", "max_tokens": 3, "return_token_ids": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks = events(client.post("/v1/completions", json=body).text)
    ids = [i for c in chunks for ch in c["choices"] for i in ch.get("token_ids", [])]
    assert ids == [1000, 1001, 1002]
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == "\u00e9x"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_return_tokens_as_token_ids(client: TestClient) -> None:
    body = {"prompt": "x", "max_tokens": 2, "logprobs": 1, "return_tokens_as_token_ids": True,
            "return_token_ids": True}  # fmt: skip
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    names = [f"token_id:{i}" for i in choice["token_ids"]]
    assert choice["logprobs"]["tokens"] == names
    assert all(k.startswith("token_id:") for top in choice["logprobs"]["top_logprobs"] for k in top)
    chat = {"messages": CHAT, "max_tokens": 2, "logprobs": True, "top_logprobs": 1,
            "return_tokens_as_token_ids": True}  # fmt: skip
    content = client.post("/v1/chat/completions", json=chat).json()["choices"][0]["logprobs"]
    assert all(e["token"].startswith("token_id:") for e in content["content"])


def test_allowed_token_ids(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    allowed = engine.word_ids[:2]
    body = {"prompt": "x", "max_tokens": 6, "allowed_token_ids": allowed, "return_token_ids": True}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    assert set(choice["token_ids"]) <= set(allowed)
    assert engine.seen[-1][2].allowed_token_ids == tuple(allowed)
    r = client.post("/v1/completions", json={**body, "allowed_token_ids": [10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "allowed_token_ids[0]"


def test_chat_echo_and_continue_final_message(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    messages = [*CHAT, {"role": "assistant", "content": "def f("}]
    body = {"messages": messages, "max_tokens": 2, "continue_final_message": True, "echo": True}
    out = client.post("/v1/chat/completions", json=body).json()
    message = out["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].startswith("def f(")
    prompt = engine.tokenizer.decode(engine.seen[-1][1])
    assert prompt.endswith("### Response:\ndef f(")  # open: no <|EOT|>, no new turn
    chunks = events(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert chunks[1]["choices"][0]["delta"] == {"content": "def f("}
    # echo with a generation prompt: the last message is the user's, so nothing is echoed
    plain = {"messages": CHAT, "max_tokens": 2, "echo": True}
    text = client.post("/v1/chat/completions", json=plain).json()["choices"][0]["message"]
    assert not text["content"].startswith("hi")
    both = {**body, "add_generation_prompt": True}
    r = client.post("/v1/chat/completions", json=both)
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, StructuredOutput("json_object", True)),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": {"type": "object"}},
                }
            },
            StructuredOutput("json", {"type": "object"}),
        ),
        ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredOutput("regex", "[0-9]+")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, StructuredOutput("choice", ["a", "b"])),
        (
            {"structured_outputs": {"json": {"type": "array"}, "disable_any_whitespace": True}},
            StructuredOutput("json", {"type": "array"}, True),
        ),
        ({"response_format": {"type": "text"}}, None),
    ],
)
def test_structured_outputs_reach_the_engine(
    client_engine: tuple[TestClient, FakeEngine], extra: dict[str, Any], expected: Any
) -> None:
    client, engine = client_engine
    for path, body in (
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/v1/completions", {"prompt": "x"}),
    ):
        r = client.post(path, json={**body, "max_tokens": 1, **extra})
        assert r.status_code == 200, r.text
        assert engine.seen[-1][2].structured == expected


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"structured_outputs": {"regex": "a\x00"}}, "structured_outputs.regex"),
    ],
)
def test_bad_structured_outputs(
    client_engine: tuple[TestClient, FakeEngine], extra: dict[str, Any], param: str
) -> None:
    client, engine = client_engine
    r = client.post("/v1/completions", json={"prompt": "x", **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert not engine.seen


def test_prompt_logprobs(client_engine: tuple[TestClient, FakeEngine]) -> None:
    # vLLM: vllm/entrypoints/openai/completion/protocol.py (prompt_logprobs); the first prompt
    # token has none, every other position maps token ids to logprob, rank and decoded text
    client, engine = client_engine
    body = {"prompt": "Hello world", "max_tokens": 1, "prompt_logprobs": 1}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    lps = choice["prompt_logprobs"]
    assert engine.seen[-1][2].prompt_logprobs == 1
    assert lps[0] is None and len(lps) == 3
    assert lps[1]["17535"] == {"logprob": -2.0, "rank": 5, "decoded_token": "Hello"}
    assert all(set(v) == {"logprob", "rank", "decoded_token"} for e in lps[1:] for v in e.values())
    chat = {"messages": CHAT, "max_tokens": 1, "prompt_logprobs": 0}
    out = client.post("/v1/chat/completions", json=chat).json()
    assert out["prompt_logprobs"][0] is None and len(out["prompt_logprobs"]) == len(
        engine.seen[-1][1]
    )
    for bad, param in (({"stream": True}, "prompt_logprobs"), ({"prompt_logprobs": 21}, None)):
        r = client.post("/v1/completions", json={**body, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == (param or "prompt_logprobs")


def test_chat_stream_return_token_ids(client_engine: tuple[TestClient, FakeEngine]) -> None:
    # vLLM's chat stream: prompt_token_ids on the body of the first chunk, token_ids per choice
    client, engine = client_engine
    body = {"messages": CHAT, "max_tokens": 3, "stream": True, "return_token_ids": True}
    chunks = events(client.post("/v1/chat/completions", json=body).text)
    assert chunks[0]["prompt_token_ids"] == engine.seen[-1][1]
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    assert all("prompt_token_ids" not in ch for c in chunks for ch in c["choices"])
    assert len([i for c in chunks[1:] for i in c["choices"][0]["token_ids"]]) == 3
