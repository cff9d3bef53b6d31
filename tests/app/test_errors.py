"""Every bad input gets the OpenAI error shape and the right status; the server keeps serving."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.app.conftest import MakeClient, wait_ready
from tests.fakes import FakeEngine

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def assert_error(r, status: int, param: str | None = None, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stop": ["a"] * 17}, "stop"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        ({}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [17535], "suffix": "x"}, "suffix"),
        ({"prompt": "x", "suffix": "y", "echo": True}, "echo"),
        ({"prompt": "x", "max_tokens": 2, "min_tokens": 3}, "min_tokens"),
    ],
)
def test_completion_bad_parameters(client: TestClient, body: dict, param: str) -> None:
    error = assert_error(client.post("/v1/completions", json=body), 400)
    assert error["param"] == param or (error["param"] or "").startswith(param), error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0].type",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": None, "tool_calls": [{}]},
            ],
            "messages[1].tool_calls",
        ),
        ([{"role": "user"}], "messages[0].content"),
        ([], "messages"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        ([{"content": "hi"}], "messages[0].role"),
    ],
)
def test_chat_bad_messages(client: TestClient, messages: list, param: str) -> None:
    assert_error(client.post("/v1/chat/completions", json={"messages": messages}), 400, param)


def test_chat_bad_options(client: TestClient) -> None:
    assert_error(
        client.post("/v1/chat/completions", json={**CHAT, "top_logprobs": 2}), 400, "top_logprobs"
    )
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert_error(client.post("/v1/chat/completions", json={**CHAT, "tools": [tool]}), 400, "tools")
    assert_error(
        client.post("/v1/chat/completions", json={**CHAT, "response_format": {"type": "xml"}}),
        400,
        "response_format.type",
    )


def test_malformed_json_and_content_type(client: TestClient) -> None:
    r = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, code="invalid_json")
    r = client.post(
        "/v1/completions", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"}
    )
    assert_error(r, 400, code="unsupported_content_type")
    r = client.post(
        "/v1/completions", content=b'["x"]', headers={"content-type": "application/json"}
    )
    assert_error(r, 400)
    r = client.post(
        "/v1/completions", content=b"\xff\xfe", headers={"content-type": "application/json"}
    )
    assert_error(r, 400)


def test_unknown_model_is_404(client: TestClient) -> None:
    error = assert_error(
        client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}),
        404,
        "model",
        "model_not_found",
    )
    assert "demo" in error["message"]
    assert_error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"}), 404, "model")


def test_context_window(make_client: MakeClient) -> None:
    client, engine = make_client(max_model_len=128)
    long = "word " * 200
    assert_error(
        client.post("/v1/completions", json={"prompt": long}), 400, code="context_length_exceeded"
    )
    assert_error(
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 127}),
        400,
        "max_tokens",
        "context_length_exceeded",
    )
    assert (
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 126}).status_code == 200
    )
    assert_error(
        client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
                "max_tokens": 124,
            },
        ),
        400,
        "max_tokens",
    )
    # chat without max_tokens gets the room that is left, never a truncated prompt
    r = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]},
    )
    prompt_len = len(engine.seen[-1][1])
    assert r.status_code == 200 and engine.seen[-1][2].max_tokens == 128 - prompt_len
    assert not engine.running


def test_token_ids_beyond_model_vocab_rejected_before_engine(make_client: MakeClient) -> None:
    # A tokenizer with more ids than the model embeds: ids in between would crash vLLM's core.
    client, engine = make_client(model_vocab_size=32000)
    for body, param in [
        ({"prompt": [17535, 32013]}, "prompt[1]"),
        ({"prompt": [[1], [5, 40000]]}, "prompt[1][1]"),
        ({"prompt": "x", "stop_token_ids": [32014]}, "stop_token_ids[0]"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias[0]"),
    ]:
        assert_error(client.post("/v1/completions", json=body), 400, param, "invalid_token_id")
    assert engine.seen == []
    assert client.post("/v1/completions", json={"prompt": [17535]}).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/completions"), 405)


def test_engine_dead_is_503_and_health_follows(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    engine.dead = True
    assert_error(client.post("/v1/completions", json={"prompt": "x"}), 503)
    assert client.get("/health").status_code == 503
    engine.dead = False
    assert client.get("/health").status_code == 200


def test_health_503_while_starting_and_after_failed_start(make_client: MakeClient) -> None:
    client, _ = make_client(wait=False, start_error=RuntimeError("no memory"))
    r = client.get("/health")
    assert r.status_code == 503
    assert_error(client.post("/v1/completions", json={"prompt": "x"}), 503)

    client, _ = make_client(wait=False, start_delay=0.5)
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "starting"}
    assert_error(client.post("/v1/completions", json={"prompt": "x"}), 503, code="starting")
    wait_ready(client)
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 200


def test_not_ready_until_every_api_process_is(client: TestClient) -> None:
    """With several API processes, one that has started still answers "starting" while another
    has not: the server is ready when all are (the peers' flags, shared with the parent)."""
    peers = [True, False]
    state = client.app.state.deepseek  # type: ignore[attr-defined]
    state.peers_ready = lambda: all(peers)
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "starting"}
    assert_error(client.post("/v1/completions", json={"prompt": "x"}), 503, code="starting")
    peers[1] = True
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 200


def test_server_keeps_serving_after_bad_requests(client: TestClient) -> None:
    for _ in range(3):
        client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
        client.post("/v1/completions", json={"prompt": [99999999]})
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 200
    assert client.get("/health").json()["requests_in_engine"] == 0


def test_lone_surrogates_are_rejected_pairs_accepted(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    r = client.post("/v1/completions", content=b'{"prompt": "\\ud800 x"}', headers=headers)
    assert_error(r, 400, code="invalid_json")
    emoji = b'{"prompt": "\\ud83e\\udd99 x", "max_tokens": 1}'  # an escaped surrogate pair
    assert client.post("/v1/completions", content=emoji, headers=headers).status_code == 200
