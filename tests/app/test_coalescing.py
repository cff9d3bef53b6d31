"""A stream whose client falls behind gets the tokens made meanwhile in one frame.

vLLM merges a request's outputs that its consumer has not taken yet (``RequestOutputCollector``
in vllm/v1/engine/output_processor.py: ``put`` adds a delta to the one still waiting). The
server profits only if it takes the next output when it can send it, not before: these tests
stall the client's socket (the ASGI ``send``) until the engine has produced everything, over an
engine that merges as vLLM's collector does, and check that the backlog leaves as one frame,
that the stream keeps its shape (every token once, one finish_reason, usage last, ``[DONE]``),
and that the editor-session guard (``X-Session-Id``; llama.vscode and Continue send one per
editor, research/clients.md) does not read ahead either.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from deepseek_serve.app import create_app
from deepseek_serve.engine import EngineOutput, SamplingOptions
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import settings_for, wait_started
from tests.fakes import FakeEngine

TOKENS = 40


def _merge(into: EngineOutput, new: EngineOutput) -> None:
    """vLLM's ``RequestOutput.add(aggregate=True)`` for deltas: texts, ids and logprobs appended,
    the newest finish reason kept."""
    into.finished = into.finished or new.finished
    by_index = {s.index: s for s in into.sequences}
    for seq in new.sequences:
        old = by_index.get(seq.index)
        if old is None:
            into.sequences.append(seq)
            continue
        old.text += seq.text
        old.token_ids = [*old.token_ids, *seq.token_ids]
        if seq.logprobs is not None:
            old.logprobs = [*(old.logprobs or []), *seq.logprobs]
        old.finish_reason, old.stop_reason = seq.finish_reason, seq.stop_reason


@dataclass
class MergingEngine(FakeEngine):
    """The fake engine behind a collector that merges outputs not yet taken, as vLLM's does."""

    produced: dict[str, asyncio.Event] = field(default_factory=dict)
    yielded: int = 0  # outputs handed to the server

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        waiting: list[EngineOutput] = []
        ready = asyncio.Event()
        done = self.produced.setdefault(request_id, asyncio.Event())

        async def produce() -> None:
            async for out in FakeEngine.generate(self, request_id, prompt_token_ids, options):
                if waiting:
                    _merge(waiting[0], out)
                else:
                    waiting.append(out)
                ready.set()
            done.set()

        task = asyncio.create_task(produce())
        try:
            while True:
                await ready.wait()
                ready.clear()
                out = waiting.pop()
                self.yielded += 1
                yield out
                if out.finished:
                    return
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _stream_to_a_stalled_client(
    engine: MergingEngine, app: Any, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> list[str]:
    """The stream's SSE data lines; the client takes nothing after the first body write until
    the engine has produced every token."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
        "server": ("t", 80),
        "headers": [(b"host", b"t"), (b"content-type", b"application/json"), *headers],
    }  # fmt: skip
    sent: list[bytes] = []
    ended = asyncio.Event()
    requests = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            assert message["status"] == 200
            return
        sent.append(message["body"])
        if len(sent) == 1:  # the socket is full: wait until the engine is done
            await asyncio.wait_for(
                asyncio.gather(*(e.wait() for e in engine.produced.values())), 10
            )
        if not message.get("more_body"):
            ended.set()

    await app(scope, receive, send)
    text = b"".join(sent).decode()
    return [frame.removeprefix("data: ") for frame in text.split("\n\n") if frame]


@pytest.mark.parametrize("session", [None, "editor-7"])
async def test_a_stalled_client_gets_the_backlog_in_one_frame(
    v1_setup: TokenizerSetup, session: str | None
) -> None:
    engine = MergingEngine(v1_setup.prompt_tokenizer, max_model_len=4096, token_delay=0.001)
    app = create_app(settings_for(), engine, v1_setup.prompt_tokenizer)
    body = {"prompt": "def f(x):", "max_tokens": TOKENS, "seed": 7, "logprobs": 0}
    headers = [(b"x-session-id", session.encode())] if session else []
    async with app.router.lifespan_context(app):
        await wait_started(app)
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        frames = await _stream_to_a_stalled_client(engine, app, stream_body, headers)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            whole = (await http.post("/v1/completions", json=body)).json()
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == TOKENS
    content = [c["choices"][0] for c in chunks[:-1]]
    # The first token went out alone; all the others waited and left together.
    assert [len(c["logprobs"]["tokens"]) for c in content] == [1, TOKENS - 1]
    assert [c["finish_reason"] for c in content] == [None, "length"]
    # The same text and logprobs as the whole response.
    assert "".join(c["text"] for c in content) == whole["choices"][0]["text"]
    tokens = [t for c in content for t in c["logprobs"]["tokens"]]
    assert tokens == whole["choices"][0]["logprobs"]["tokens"]


async def test_a_stalled_client_of_several_prompts_gets_each_backlog_in_one_frame(
    v1_setup: TokenizerSetup,
) -> None:
    engine = MergingEngine(v1_setup.prompt_tokenizer, max_model_len=4096, token_delay=0.001)
    app = create_app(settings_for(), engine, v1_setup.prompt_tokenizer)
    body = {"prompt": ["def f(x):", "class A:"], "max_tokens": TOKENS, "seed": 7, "logprobs": 0}
    async with app.router.lifespan_context(app):
        await wait_started(app)
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        frames = await _stream_to_a_stalled_client(engine, app, stream_body, [])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            whole = (await http.post("/v1/completions", json=body)).json()
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2 * TOKENS
    for index in (0, 1):
        content = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        # At most the first token of each prompt went out alone (one read ahead per prompt);
        # the rest left in one frame.
        assert [len(c["logprobs"]["tokens"]) for c in content] == [1, TOKENS - 1]
        assert [c["finish_reason"] for c in content] == [None, "length"]
        assert "".join(c["text"] for c in content) == whole["choices"][index]["text"]
