"""The deployment guide's /api/v1 REST API over the fake engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from deepseek_serve.routes.guide.protocol import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, LANGUAGE_STOPS
from tests.fakes import FakeEngine

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def _usage_ok(body: dict[str, Any]) -> None:
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_completion_shape(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = client.post("/api/v1/completion", json={"prompt": "def f():\n", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    (choice,) = body["choices"]
    assert set(choice) == {"text", "index", "finish_reason"} and choice["index"] == 0
    _usage_ok(body)
    _, ids, options = engine.seen[-1]
    assert ids == engine.tokenizer.encode("def f():\n")
    assert (options.temperature, options.top_p, options.max_tokens) == (
        DEFAULT_TEMPERATURE, DEFAULT_TOP_P, 5,
    )  # fmt: skip
    client.post("/api/v1/completion", json={"prompt": "x"})
    assert engine.seen[-1][2].max_tokens == 256 - 2  # default 500, capped by the room left


def test_language_adds_stop_sequences(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {"prompt": "def f():\n", "max_tokens": 3, "language": "Python", "stop": ["\n\n\n"]}
    assert client.post("/api/v1/completion", json=body).status_code == 200
    assert engine.seen[-1][2].stop == ("\n\n\n", *LANGUAGE_STOPS["python"])
    client.post("/api/v1/completion", json={**body, "language": "golang", "stop": None})
    assert engine.seen[-1][2].stop == LANGUAGE_STOPS["go"]
    r = client.post("/api/v1/completion", json={**body, "language": "cobol"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "language"
    assert "python" in r.json()["error"]["message"]


def test_insertion_shape(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = client.post("/api/v1/insertion", json={"prefix": "a = ", "suffix": "\nb", "max_tokens": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("ins-") and body["object"] == "text_insertion"
    assert set(body["choices"][0]) == {"text", "index", "finish_reason"}
    _usage_ok(body)
    assert engine.seen[-1][1] == engine.tokenizer.encode(f"{FIM_BEGIN}a = {FIM_HOLE}\nb{FIM_END}")


def test_chat_shape(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 4, "temperature": 0.1})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chat-") and body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert set(choice) == {"index", "message", "finish_reason"}
    assert choice["message"]["role"] == "assistant"
    _usage_ok(body)
    assert engine.seen[-1][2].stop_token_ids == (32021,)  # chat turns end at <|EOT|>


def test_streams(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, _ = client_engine
    r = client.post("/api/v1/insertion", json={"prefix": "a", "suffix": "b", "max_tokens": 4,
                                               "stream": True})  # fmt: skip
    frames = [f[len("data: ") :] for f in r.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert {c["object"] for c in chunks} == {"text_insertion"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("ins-")
    assert all("logprobs" not in choice for c in chunks for choice in c["choices"])
    r = client.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": 3, "stream": True})  # fmt: skip
    chunks = [json.loads(f[len("data: ") :]) for f in r.text.split("\n\n")[:-2]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("logprobs" not in choice for c in chunks for choice in c["choices"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/v1/completion", {}, "prompt"),
        ("/api/v1/completion", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/api/v1/completion", {"prompt": "x", "temperature": "hot"}, "temperature"),
        ("/api/v1/completion", {"prompt": "x", "stop": [""]}, "stop"),
        ("/api/v1/completion", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/api/v1/insertion", {"prefix": "x"}, "suffix"),
        ("/api/v1/chat", {"messages": []}, "messages"),
        ("/api/v1/chat", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_bad_input(
    client_engine: tuple[TestClient, FakeEngine], path: str, body: dict[str, Any], param: str
) -> None:
    client, engine = client_engine
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and not engine.seen
