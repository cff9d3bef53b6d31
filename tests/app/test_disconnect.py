"""A client that goes away takes its engine requests with it (raw ASGI controls the disconnect)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from deepseek_serve.app import create_app
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import settings_for, wait_started
from tests.fakes import FakeEngine


async def _run(
    v1_setup: TokenizerSetup,
    body: dict[str, Any],
    disconnect_after_chunks: int,
    spec_version: str = "2.3",
) -> tuple[FakeEngine, list[dict[str, Any]]]:
    engine = FakeEngine(v1_setup.prompt_tokenizer, token_delay=0.005, max_model_len=4096)
    app = create_app(settings_for(), engine, v1_setup.prompt_tokenizer)
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()
    payload = json.dumps(body).encode()
    messages = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        chunks = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
        if len(chunks) >= disconnect_after_chunks:
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "headers": [(b"content-type", b"application/json")],
        "app": app,
    }
    async with app.router.lifespan_context(app):
        await wait_started(app)
        if disconnect_after_chunks == 0:
            asyncio.get_running_loop().call_later(0.05, gone.set)
        await asyncio.wait_for(app(scope, receive, send), timeout=5)
        assert engine.seen, "the request never reached the engine"
        return engine, sent


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_stream_disconnect_aborts(v1_setup: TokenizerSetup, spec_version: str) -> None:
    engine, sent = await _run(
        v1_setup, {"prompt": "x", "max_tokens": 2000, "stream": True}, 3, spec_version
    )
    assert engine.running == set()
    frames = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert frames.count(b"data: ") < 20  # stopped long before 2000 tokens


async def test_non_stream_disconnect_aborts(v1_setup: TokenizerSetup) -> None:
    engine, sent = await _run(v1_setup, {"prompt": "x", "max_tokens": 2000}, 0)
    assert engine.running == set()
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] in ([], [499])


async def test_disconnect_with_several_prompts_aborts_all(v1_setup: TokenizerSetup) -> None:
    engine, _ = await _run(
        v1_setup, {"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 2000, "stream": True}, 4
    )
    assert len(engine.seen) == 3 and engine.running == set()
