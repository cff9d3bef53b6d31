"""Rate limits, size caps and backpressure: each refusal, its status and its headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from tests.app.conftest import MakeClient

BODY = {"prompt": "def f(", "max_tokens": 2}
KEY = {"Authorization": "Bearer sk-1"}


def error_of(r: object) -> dict[str, object]:
    body = r.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_request_rate_limit_per_key(make_client: MakeClient) -> None:
    client = make_client(settings={"api_keys": "sk-1,sk-2", "request_rate_limit": "3/minute"})[0]
    for _ in range(3):
        assert client.post("/v1/completions", json=BODY, headers=KEY).status_code == 200
    r = client.post("/v1/completions", json=BODY, headers=KEY)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert error_of(r)["type"] == "rate_limit_error"
    # another key has its own budget
    other = {"Authorization": "Bearer sk-2"}
    assert client.post("/v1/completions", json=BODY, headers=other).status_code == 200


def test_default_request_limit_is_the_guides_100_per_hour(make_client: MakeClient) -> None:
    client = make_client(settings={"api_keys": "sk-1"})[0]
    codes = [client.get("/v1/models", headers=KEY).status_code for _ in range(101)]
    assert codes[:100] == [200] * 100
    assert codes[100] == 429


def test_token_rate_limit(make_client: MakeClient) -> None:
    client = make_client(
        settings={"api_keys": "sk-1", "request_rate_limit": None, "token_rate_limit": "30/minute"}
    )[0]
    # prompt 4 + 20 generated = 24 tokens: within budget, charged afterwards
    r = client.post("/v1/completions", json={**BODY, "max_tokens": 20}, headers=KEY)
    assert r.status_code == 200
    assert client.post("/v1/completions", json=BODY, headers=KEY).status_code == 200  # 30 used
    r = client.post("/v1/completions", json=BODY, headers=KEY)
    assert r.status_code == 429
    assert error_of(r)["code"] == "token_rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1


def test_no_rate_limit_without_keys(client: TestClient) -> None:
    assert all(client.get("/v1/models").status_code == 200 for _ in range(120))


def test_body_too_large_by_content_length(make_client: MakeClient) -> None:
    client = make_client(settings={"max_body_bytes": 2048})[0]
    r = client.post("/v1/completions", json={"prompt": "x" * 4000, "max_tokens": 1})
    assert r.status_code == 413
    assert error_of(r)["code"] == "request_too_large"
    assert client.post("/v1/completions", json=BODY).status_code == 200


def test_body_too_large_when_streamed_without_length(make_client: MakeClient) -> None:
    client = make_client(settings={"max_body_bytes": 2048})[0]

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    r = client.post(
        "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert error_of(r)["code"] == "request_too_large"


def test_bad_content_length(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": "two"},
    )
    assert r.status_code == 400


def test_header_caps(make_client: MakeClient) -> None:
    client = make_client(settings={"max_headers": 20, "max_header_bytes": 2048})[0]
    many = {f"x-h{i}": "1" for i in range(30)}
    r = client.get("/v1/models", headers=many)
    assert r.status_code == 431
    assert error_of(r)["code"] == "headers_too_large"
    r = client.get("/v1/models", headers={"x-big": "y" * 3000})
    assert r.status_code == 431
    assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    ("settings", "body", "param"),
    [
        ({"max_n": 2}, {"n": 3}, "n"),
        ({"max_stop_sequences": 2}, {"stop": ["a", "b", "c"]}, "stop"),
        ({"max_logprobs": 2}, {"logprobs": 3}, "logprobs"),
        ({"max_prompts": 2}, {"prompt": ["a", "b", "c"]}, "prompt"),
        ({"max_tokens_limit": 8}, {"max_tokens": 9}, "max_tokens"),
    ],
)
def test_completion_caps(
    make_client: MakeClient, settings: dict[str, object], body: dict[str, object], param: str
) -> None:
    client = make_client(settings=settings)[0]
    r = client.post("/v1/completions", json={**BODY, **body})
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_chat_caps(make_client: MakeClient) -> None:
    client = make_client(settings={"max_messages": 2, "max_logprobs": 1})[0]
    msgs = [{"role": "user", "content": "hi"}] * 3
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 2})
    assert r.status_code == 400 and error_of(r)["param"] == "messages"
    r = client.post(
        "/v1/chat/completions",
        json={"messages": msgs[:1], "max_tokens": 2, "logprobs": True, "top_logprobs": 2},
    )
    assert r.status_code == 400 and error_of(r)["param"] == "top_logprobs"
    ok = client.post("/v1/chat/completions", json={"messages": msgs[:2], "max_tokens": 2})
    assert ok.status_code == 200


def test_max_tokens_limit_caps_the_default_too(make_client: MakeClient) -> None:
    client, engine = make_client(settings={"max_tokens_limit": 5})
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert engine.seen[-1][2].max_tokens == 5


def test_overload_gives_503_with_retry_after(make_client: MakeClient) -> None:
    client, engine = make_client(
        settings={"max_requests_in_flight": 1, "retry_after_seconds": 3}, token_delay=0.05
    )
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(
            client.post("/v1/completions", json={**BODY, "max_tokens": 20}).status_code
        )
    )
    slow.start()
    deadline = time.monotonic() + 5
    while not engine.running:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    r = client.post("/v1/completions", json=BODY)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "3"
    assert error_of(r)["code"] == "overloaded"
    assert client.get("/health").status_code == 200  # reads are not bounded
    slow.join()
    assert results == [200]
    assert client.post("/v1/completions", json=BODY).status_code == 200


def test_metrics_scrapes_do_not_use_the_request_budget(make_client: MakeClient) -> None:
    client = make_client(settings={"api_keys": "sk-1", "request_rate_limit": "2/minute"})[0]
    for _ in range(5):
        assert client.get("/metrics", headers=KEY).status_code == 200
    assert client.get("/v1/models", headers=KEY).status_code == 200
    assert client.get("/metrics").status_code == 401  # still needs the key


def test_caps_cover_the_guide_api_and_infill(make_client: MakeClient) -> None:
    client = make_client(settings={"max_stop_sequences": 1})[0]
    body = {"prompt": "def f(", "max_tokens": 2, "stop": ["a", "b"]}
    r = client.post("/api/v1/completion", json=body)
    assert r.status_code == 400, r.text
    r = client.post("/infill", json={"input_prefix": "x", "n_predict": 2, "stop": ["a", "b"]})
    assert r.status_code == 400, r.text
    assert client.post("/infill", json={"input_prefix": "x", "n_predict": 2}).status_code == 200


def test_stop_cap_is_the_operators_not_a_hard_coded_one(make_client: MakeClient) -> None:
    """max_stop_sequences above 16 is honoured on every dialect, and /api/v1's language stops
    (the server's, not the client's) are added whole, never cut to make room."""
    client, engine = make_client(settings={"max_stop_sequences": 40})
    stops = [f"#{i}" for i in range(40)]
    assert client.post("/v1/completions", json={**BODY, "stop": stops}).status_code == 200
    assert engine.seen[-1][2].stop == tuple(stops)
    r = client.post("/infill", json={"input_prefix": "x", "n_predict": 2, "stop": stops})
    assert r.status_code == 200, r.text
    body = {"prompt": "def f(", "max_tokens": 2, "stop": stops, "language": "python"}
    assert client.post("/api/v1/completion", json=body).status_code == 200
    sent = engine.seen[-1][2].stop
    assert sent[:40] == tuple(stops) and "\ndef " in sent and "\nclass " in sent
    r = client.post("/v1/completions", json={**BODY, "stop": [*stops, "one more"]})
    assert r.status_code == 400 and error_of(r)["param"] == "stop"


def test_the_gate_answers_in_the_routes_dialect(make_client: MakeClient) -> None:
    """/infill speaks llama.cpp's error shape, also when the gate refuses it (key, size)."""
    client = make_client(settings={"api_keys": "sk-1", "max_body_bytes": 1024})[0]
    r = client.post("/infill", json={"input_prefix": "x", "n_predict": 2})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == 401  # llama.cpp: the status as the code
    assert r.json()["error"]["type"] == "authentication_error"
    r = client.post("/infill", json={"input_prefix": "x" * 2000}, headers=KEY)
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    r = client.post("/v1/completions", json=BODY)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
