"""The stream on the wire: chunk bytes, one write per engine output, and how the stream ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from deepseek_serve.engine import EngineOutput, SequenceDelta
from deepseek_serve.http.streaming import DONE_FRAME, SSEResponse, sse_frame, with_error_frame
from deepseek_serve.routes.openai.formatting import ChatFormatter, CompletionFormatter, Formatter


def _outputs(pieces: list[str], prompts: int = 1) -> list[tuple[int, EngineOutput]]:
    outs = []
    for p in range(prompts):
        for i, text in enumerate(pieces):
            last = i == len(pieces) - 1
            seq = SequenceDelta(0, text, [100 + i], finish_reason="length" if last else None)
            outs.append((p, EngineOutput([seq], finished=last)))
    return outs


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _frames(formatter: Formatter, outs: list[tuple[int, EngineOutput]]) -> list[bytes]:
    async def run() -> list[bytes]:
        return [f async for f in formatter.frames(_aiter(outs))]

    return asyncio.run(run())


def _events(frame: bytes) -> list[dict[str, Any]]:
    parts = frame.split(b"\n\n")
    assert parts[-1] == b""
    return [json.loads(p[len(b"data: ") :]) for p in parts[:-1]]


def _completion(**kw: Any) -> CompletionFormatter:
    return CompletionFormatter(request_id="cmpl-1", created=7, model="demo\u00e9", prompt_lens=[3],
                               n=1, want_logprobs=False, **kw)  # fmt: skip


def test_chunk_bytes_equal_a_whole_json_frame() -> None:
    for usage, continuous in [(False, False), (True, False), (True, True)]:
        f = _completion(include_usage=usage, continuous_usage=continuous)
        choice = {"index": 0, "text": 'x\n"é', "logprobs": None, "finish_reason": None}
        expected: dict[str, Any] = {"id": "cmpl-1", "object": "text_completion", "created": 7,
                                    "model": "demo\u00e9", "choices": [choice]}  # fmt: skip
        if usage:
            expected["usage"] = f.usage() if continuous else None
        assert f._chunk([choice]) == sse_frame(expected)


def test_one_write_per_engine_output_and_usage_rides_with_the_last() -> None:
    frames = _frames(_completion(include_usage=True), _outputs(["a", "b", "c"]))
    assert len(frames) == 3
    assert [len(_events(f)) for f in frames] == [1, 1, 2]
    last_token, usage = _events(frames[-1])
    assert last_token["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3

    # Two prompts: usage only once, after both finished.
    two = CompletionFormatter(request_id="c", created=1, model="m", prompt_lens=[3, 4], n=1,
                              want_logprobs=False, include_usage=True)  # fmt: skip
    events = [e for f in _frames(two, _outputs(["a", "b"], prompts=2)) for e in _events(f)]
    assert [bool(e["choices"]) for e in events] == [True, True, True, True, False]
    assert events[-1]["usage"]["prompt_tokens"] == 7


def test_chat_role_delta_shares_the_first_write() -> None:
    chat = ChatFormatter(request_id="chatcmpl-1", created=1, model="m", prompt_lens=[3], n=1,
                         want_logprobs=False)  # fmt: skip
    first = _events(_frames(chat, _outputs(["hi", "!"]))[0])
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first[1]["choices"][0]["delta"] == {"content": "hi"}


def test_unfinished_stream_still_ends_with_usage() -> None:
    outs = [(0, EngineOutput([SequenceDelta(0, "a", [1])], finished=False))]
    frames = _frames(_completion(include_usage=True), outs)
    assert [len(_events(f)) for f in frames] == [1, 1]


def test_done_goes_out_with_the_end_of_the_body() -> None:
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        frames = with_error_frame(_aiter([b"data: 1\n\n", b"data: 2\n\n"]))
        response = SSEResponse(frames, end=DONE_FRAME)
        scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET"}
        await response(scope, receive, send)

    asyncio.run(run())
    bodies = [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]
    assert bodies == [(b"data: 1\n\n", True), (b"data: 2\n\n", True), (DONE_FRAME, False)]
