"""What operators rely on: request ids, metrics, JSON logs, draining, and engine death."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
from starlette.testclient import TestClient

from deepseek_serve.errors import EngineDeadError
from deepseek_serve.http.lifecycle import drain
from deepseek_serve.http.observability import configure_logging
from deepseek_serve.http.state import ServerState
from tests.app.conftest import MakeClient

BODY = {"prompt": "def f(", "max_tokens": 3}


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    r = client.post("/v1/completions", json=BODY, headers={"X-Request-Id": "ide-42.7"})
    assert r.headers["x-request-id"] == "ide-42.7"
    made = client.get("/v1/models").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/v1/models").headers["x-request-id"]
    # not echoed when it could inject into headers or logs
    r = client.get("/v1/models", headers={"X-Request-Id": "a b\tc" + "x" * 200})
    assert r.headers["x-request-id"] != "a b\tc" + "x" * 200
    # errors carry it too
    assert "x-request-id" in client.post("/v1/completions", json={}).headers


def test_metrics_count_requests_tokens_and_latency(client: TestClient) -> None:
    route = 'route="/v1/completions"'
    assert client.post("/v1/completions", json=BODY).status_code == 200
    assert client.post("/v1/completions", json={**BODY, "stream": True}).status_code == 200
    assert client.post("/v1/completions", json={"prompt": 3}).status_code == 400
    assert metric(client, f'deepseek_serve_requests_total{{{route},status="200"}}') == 2
    assert metric(client, f'deepseek_serve_requests_total{{{route},status="400"}}') == 1
    assert metric(client, f"deepseek_serve_generation_tokens_total{{{route}}}") == 6
    assert metric(client, f"deepseek_serve_prompt_tokens_total{{{route}}}") == 8
    assert metric(client, f"deepseek_serve_time_to_first_token_seconds_count{{{route}}}") == 2
    assert metric(client, f"deepseek_serve_inter_token_latency_seconds_count{{{route}}}") == 4
    assert metric(client, f"deepseek_serve_request_duration_seconds_count{{{route}}}") == 3
    assert metric(client, "deepseek_serve_requests_in_flight") == 0
    assert metric(client, "deepseek_serve_requests_waiting") == 0
    assert metric(client, "deepseek_serve_engine_healthy") == 1
    # unknown paths share one label, so a scanner cannot blow up the series count
    client.get("/wp-admin/x")
    client.get("/wp-admin/y")
    assert metric(client, 'deepseek_serve_requests_total{route="unmatched",status="404"}') == 2


def test_metrics_count_rejections(make_client: MakeClient) -> None:
    client = make_client(settings={"api_keys": "k", "public_metrics": True})[0]
    client.get("/v1/models")
    assert metric(client, 'deepseek_serve_requests_rejected_total{reason="unauthorized"}') == 1


def test_json_logs_carry_the_request_id(client: TestClient) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        stream = io.StringIO()
        root.handlers[0].stream = stream  # type: ignore[attr-defined]
        client.post("/v1/completions", json=BODY, headers={"X-Request-Id": "req-abc"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [r for r in records if r["logger"] == "deepseek_serve.access"]
    assert access, records
    assert access[-1]["request_id"] == "req-abc"
    assert access[-1]["status"] == 200
    assert access[-1]["generated_tokens"] == 3
    assert {"time", "level", "message"} <= set(access[-1])


def state_of(client: TestClient) -> ServerState:
    return client.app.state.deepseek  # type: ignore[attr-defined,no-any-return]


def stream_in_thread(
    client: TestClient, body: dict[str, object], out: list[str]
) -> threading.Thread:
    def run() -> None:
        with client.stream("POST", "/v1/completions", json=body) as r:
            out.extend(line for line in r.iter_lines() if line)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_running(engine: object) -> None:
    deadline = time.monotonic() + 5
    while not engine.running:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_drain_lets_running_requests_finish_and_refuses_new(make_client: MakeClient) -> None:
    client, engine = make_client(settings={"shutdown_timeout": 10}, token_delay=0.02)
    frames: list[str] = []
    thread = stream_in_thread(client, {**BODY, "max_tokens": 30, "stream": True}, frames)
    wait_running(engine)
    state = state_of(client)
    draining = threading.Thread(target=client.portal.call, args=(drain, state))  # type: ignore[union-attr]
    draining.start()
    deadline = time.monotonic() + 5
    while not state.draining:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    r = client.post("/v1/completions", json=BODY)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert client.get("/health").json() == {"status": "draining"}
    thread.join()
    draining.join()
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert "error" not in chunks[-1]
    assert sum(len(c["choices"][0]["text"]) > 0 for c in chunks) >= 25  # it ran to the end


def test_drain_deadline_ends_the_rest_with_an_error_frame(make_client: MakeClient) -> None:
    client, engine = make_client(settings={"shutdown_timeout": 0.2}, token_delay=0.02)
    frames: list[str] = []
    thread = stream_in_thread(client, {**BODY, "max_tokens": 200, "stream": True}, frames)
    wait_running(engine)
    start = time.monotonic()
    client.portal.call(drain, state_of(client))  # type: ignore[union-attr]
    assert time.monotonic() - start < 3
    thread.join(5)
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][6:])["error"]["code"] == "shutting_down"
    assert not engine.running
    assert metric(client, 'deepseek_serve_requests_aborted_total{reason="shutdown"}') == 1


def test_engine_death_turns_health_503_then_calls_for_exit(make_client: MakeClient) -> None:
    fatal: list[BaseException] = []
    client, engine = make_client(
        settings={"engine_death_exit_delay": 0.3}, on_fatal=fatal.append, token_delay=0.01
    )
    frames: list[str] = []
    thread = stream_in_thread(client, {**BODY, "max_tokens": 200, "stream": True}, frames)
    wait_running(engine)
    engine.dead = True
    engine.fail_after, engine.fail_with = 0, EngineDeadError
    deadline = time.monotonic() + 2
    while client.get("/health").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not fatal  # still answering 503 during the exit delay
    assert client.post("/v1/completions", json=BODY).status_code == 503
    thread.join(5)
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][6:])["error"]["code"] == "engine_dead"
    deadline = time.monotonic() + 3
    while not fatal:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert metric(client, "deepseek_serve_engine_healthy") == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_formats(fmt: str) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning", fmt)
        stream = io.StringIO()
        root.handlers[0].stream = stream  # type: ignore[attr-defined]
        logging.getLogger("x").warning("hello %s", "there")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = stream.getvalue().strip()
    if fmt == "json":
        assert json.loads(line)["message"] == "hello there"
    else:
        assert line.endswith("x: hello there")
