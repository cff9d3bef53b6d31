"""Bodies that once got a 500 and bodies that arrive slowly or not at all, in process.

The real-server versions (a flood, slowloris, slow uploads against a server on a port) are in
tests/e2e/test_hostile_clients.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.app.conftest import MakeClient

DEEP = 100_000
JSON = {"content-type": "application/json"}
HUGE = "9" * 5000  # over Python's 4300-digit int conversion limit


@pytest.mark.parametrize("path", ["/v1/completions", "/infill", "/v1/chat/completions"])
@pytest.mark.parametrize("shape", ["array", "object"])
def test_deep_nesting_is_a_400(client: TestClient, path: str, shape: str) -> None:
    nested = "[" * DEEP + "]" * DEEP if shape == "array" else '{"a":' * DEEP + "1" + "}" * DEEP
    r = client.post(path, content=f'{{"prompt": {nested}}}', headers=JSON)
    assert r.status_code == 400, r.text
    assert "nested deeper than 64 levels" in r.json()["error"]["message"]


def test_brackets_inside_strings_are_not_nesting(client: TestClient) -> None:
    prompt = "[{" * 40 + '\\"[' * 30  # 110 brackets, all in a string
    r = client.post(
        "/v1/completions", content=f'{{"prompt": "{prompt}", "max_tokens": 2}}', headers=JSON
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", f'{{"prompt": "x", "max_tokens": {HUGE}}}', "max_tokens"),
        ("/v1/completions", f'{{"prompt": "x", "max_tokens": -{HUGE}}}', "max_tokens"),
        ("/v1/completions", f'{{"prompt": [1, 2, {HUGE}]}}', "prompt[2]"),
        ("/api/v1/completion", f'{{"prompt": "x", "max_tokens": {HUGE}}}', "max_tokens"),
        ("/v1/chat/completions", f'{{"messages": [], "logit_bias": {{"5": {HUGE}}}}}', None),
        ("/infill", f'{{"input_prefix": "x", "n_predict": {HUGE}}}', "n_predict"),
    ],
)
def test_a_number_with_thousands_of_digits_is_a_400_naming_it(
    client: TestClient, path: str, body: str, param: str | None
) -> None:
    r = client.post(path, content=body, headers=JSON)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "too many digits" in error["message"]
    if param is not None:
        assert error["param"] == param


# Source: the reproduction; "²" and "٣" are digits to str.isdigit but not to int().
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/infill", {"input_prefix": "x", "input_suffix": "y", "n_predict": 2}),
    ],
)
@pytest.mark.parametrize("key", ["\u00b2", "\u0663", "\uff15"])
def test_unicode_digit_logit_bias_keys_are_a_400(
    client: TestClient, path: str, body: dict[str, Any], key: str
) -> None:
    r = client.post(path, json={**body, "logit_bias": {key: 1}})
    assert r.status_code == 400, r.text
    assert "logit_bias keys must be token ids" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "logit_bias"


# --- the body, read by the gate before the in-flight slot ---


def call(
    client: TestClient,
    path: str,
    messages: list[dict[str, Any]],
    hold: float,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Any:
    """Run one request straight through the ASGI app in the client's event loop: ``messages``
    are what the connection delivers, then it stays silent for ``hold`` seconds, then says the
    client is gone. Returns the response messages and the server's in-flight count seen while
    it waited."""

    async def run() -> tuple[list[dict[str, Any]], list[int]]:
        state = client.app.state.deepseek  # type: ignore[attr-defined]
        queue = list(messages)
        sent: list[dict[str, Any]] = []
        seen: list[int] = []

        async def receive() -> dict[str, Any]:
            if queue:
                return queue.pop(0)
            seen.append(state.in_flight)
            await asyncio.sleep(hold)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers
            or [(b"content-type", b"application/json"), (b"content-length", b"60")],
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await client.app(scope, receive, send)
        return sent, seen

    return client.portal.call(run)  # type: ignore[union-attr]


PART = {"type": "http.request", "body": b'{"pro', "more_body": True}


def test_a_slow_body_is_a_408_and_holds_no_slot(make_client: MakeClient) -> None:
    client = make_client(settings={"body_timeout": 0.3, "max_requests_in_flight": 1})[0]
    sent, seen = call(client, "/v1/completions", [PART], hold=5)
    assert seen == [0]  # no slot taken while the body was incomplete
    start = sent[0]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert b"body did not arrive within 0.3 s" in sent[1]["body"]
    # The one slot is free for a request whose body is whole.
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 200


def test_a_client_leaving_mid_body_is_logged_as_a_disconnect(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()[0]
    with caplog.at_level(logging.INFO):
        sent, _ = call(client, "/infill", [PART], hold=0)
    assert sent == []
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, "client disconnected while sending the request body") in messages
    assert any("POST /infill 499" in m for _, m in messages), messages
    assert not any(r.exc_info for r in caplog.records)
    assert not any("crashed" in m for _, m in messages)


def test_a_body_over_the_cap_while_reading_is_a_413_that_closes(make_client: MakeClient) -> None:
    client = make_client(settings={"max_body_bytes": 1024})[0]
    chunks = [{"type": "http.request", "body": b" " * 600, "more_body": True}] * 2
    sent, _ = call(client, "/v1/completions", chunks, hold=5)
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_request_target_over_the_cap_is_a_414(make_client: MakeClient) -> None:
    client = make_client(settings={"max_request_target_bytes": 256})[0]
    assert client.get("/health?" + "a" * 200).status_code == 200
    r = client.get("/health?" + "a" * 300)
    assert r.status_code == 414
    assert r.json()["error"]["code"] == "uri_too_long"


@pytest.mark.parametrize("length", ["\u00b2", "1e3", "-1", " "])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(
    client: TestClient, length: str
) -> None:
    # h11 refuses these on a real connection; in process the gate must too, not crash.
    whole = {"type": "http.request", "body": b"{}", "more_body": False}
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", length.encode("latin-1")),
    ]
    sent, _ = call(client, "/v1/completions", [whole], hold=0, headers=headers)
    assert sent[0]["status"] == 400
