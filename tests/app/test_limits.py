"""Rate limits, size caps and backpressure: each refusal, its status and its headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.types import Message

from deepseek_serve.errors import RateLimitError
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
    # prompt 4 + max_tokens 20 = 24 tokens reserved, and all used
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


@pytest.mark.parametrize("length", ["\u00b2", "\u0663", "2\u00a0"])
def test_a_unicode_digit_content_length_is_a_400(client: TestClient, length: str) -> None:
    """'²' is a digit to str.isdigit() but not to int(). HTTP clients and uvicorn's parsers
    would not pass such a header on, so the gate's own check is called with it directly."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", length.encode("latin-1", "replace")),
        ],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 400


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


def test_metrics_scrapes_do_not_use_the_request_budget(
    make_client: MakeClient, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-1 name=scraper metrics=yes\n")
    settings = {"api_key_file": keys, "request_rate_limit": "2/minute"}
    client = make_client(settings=settings)[0]
    for _ in range(5):
        assert client.get("/metrics", headers=KEY).status_code == 200
    assert client.get("/v1/models", headers=KEY).status_code == 200
    assert client.get("/metrics").status_code == 401  # still needs the key


def _post_together(client: TestClient, bodies: list[dict[str, object]]) -> list[object]:
    results: list[object] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def post(i: int) -> None:
        start.wait()
        results[i] = client.post("/v1/completions", json=bodies[i], headers=KEY)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_requests_cannot_overrun_the_token_limit(make_client: MakeClient) -> None:
    """Issue 16: six requests of max_tokens 30 sent together under tokens=60/minute were all
    admitted and used 198 tokens. Each now reserves its prompt plus max_tokens on admission."""
    settings = {"api_keys": "sk-1", "request_rate_limit": None, "token_rate_limit": "60/minute"}
    client = make_client(settings=settings, token_delay=0.02)[0]
    results = _post_together(client, [{**BODY, "max_tokens": 30}] * 6)
    ok = [r for r in results if r.status_code == 200]  # type: ignore[attr-defined]
    refused = [r for r in results if r.status_code == 429]  # type: ignore[attr-defined]
    assert len(ok) + len(refused) == 6 and ok and refused
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)  # type: ignore[attr-defined]
    assert used <= 60
    for r in refused:
        assert error_of(r)["code"] == "token_rate_limit_exceeded"
        assert "max_tokens" in str(error_of(r)["message"])
        assert int(r.headers["retry-after"]) >= 1  # type: ignore[attr-defined]


def test_unused_reservations_are_given_back(make_client: MakeClient) -> None:
    settings = {"api_keys": "sk-1", "request_rate_limit": None, "token_rate_limit": "60/minute"}
    client, engine = make_client(settings=settings)
    stop = engine.word_ids[0]
    engine.script = [stop]
    # prompt 4 + max_tokens 50 = 54 reserved; it stops at once, using 5: 49 come back
    body = {**BODY, "max_tokens": 50, "stop_token_ids": [stop]}
    for _ in range(2):  # 5 + 54 <= 60: only possible if the first one's unused 49 came back
        r = client.post("/v1/completions", json=body, headers=KEY)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 1
    # a request that ran to max_tokens keeps its whole reservation
    engine.script = None
    r = client.post("/v1/completions", json={**BODY, "max_tokens": 45}, headers=KEY)
    assert r.status_code == 200, r.text  # 10 + 49 = 59
    assert r.json()["usage"]["total_tokens"] == 49
    r = client.post("/v1/completions", json={**BODY, "max_tokens": 1}, headers=KEY)
    assert r.status_code == 429  # 59 + 5 > 60


def test_a_request_larger_than_the_token_limit_is_a_400_naming_max_tokens(
    make_client: MakeClient,
) -> None:
    settings = {"api_keys": "sk-1", "request_rate_limit": None, "token_rate_limit": "60/minute"}
    client = make_client(settings=settings)[0]
    r = client.post("/v1/completions", json={**BODY, "max_tokens": 57}, headers=KEY)
    assert r.status_code == 400
    assert error_of(r)["param"] == "max_tokens"
    r = client.post("/infill", json={"input_prefix": "x", "n_predict": 200}, headers=KEY)
    assert r.status_code == 400
    assert error_of(r)["param"] == "n_predict"  # the dialect's own name
    assert client.post("/v1/completions", json=BODY, headers=KEY).status_code == 200


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


def test_a_reservation_gives_back_only_to_its_own_window() -> None:
    from deepseek_serve.http.auth import ApiKey
    from deepseek_serve.http.quotas import Quotas

    now = [1000.0]
    quotas = Quotas()
    quotas._clock = lambda: now[0]
    key = ApiKey("k", b"", None, "100/minute")
    first = quotas.reserve(key, 90, param="max_tokens")
    with pytest.raises(RateLimitError):
        quotas.reserve(key, 20, param="max_tokens")
    now[0] += 61  # a new window; the old reservation's refund must not inflate it
    second = quotas.reserve(key, 100, param="max_tokens")
    quotas.settle(key, first, used=10)
    with pytest.raises(RateLimitError):
        quotas.reserve(key, 1, param="max_tokens")
    quotas.settle(key, second, used=30)  # its own window: 70 come back
    assert quotas.reserve(key, 70, param="max_tokens") is not None
    quotas.settle(key, None, used=5)  # unreserved use is charged as it happened
    with pytest.raises(RateLimitError):
        quotas.reserve(key, 1, param="max_tokens")
