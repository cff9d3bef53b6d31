"""Running engine requests for an HTTP request, and Server-Sent Events.

Three tasks race while a response streams: producing frames from the engine, sending them, and
listening for the client to go away. Whichever way it ends, the engine requests are aborted
(closing an engine iterator aborts its request) and the stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from deepseek_serve.engine import EngineOutput, SamplingOptions
from deepseek_serve.errors import APIError, as_api_error
from deepseek_serve.http.tracking import TrackedEngine

logger = logging.getLogger(__name__)

DONE_FRAME = b"data: [DONE]\n\n"
T = TypeVar("T")


def json_bytes(value: Any) -> bytes:
    """Compact JSON as sent on the wire (UTF-8, not ASCII-escaped)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def sse_frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json_bytes(payload) + b"\n\n"


async def engine_outputs(
    engine: TrackedEngine, request_id: str, prompts: list[list[int]], options: SamplingOptions
) -> AsyncIterator[tuple[int, EngineOutput]]:
    """Outputs of one engine request per prompt, as ``(prompt_index, output)``, interleaved as
    they come. Closing this iterator aborts whatever is still running."""
    if len(prompts) == 1:
        stream = engine.generate(request_id, prompts[0], options)
        try:
            async for out in stream:
                yield 0, out
        finally:
            await aclose(stream)
        return

    # One pending read per stream, started only once its previous output has been handed on:
    # at most one output per stream is taken ahead, and vLLM merges the rest of a slow client's
    # backlog (as with one prompt).
    streams = [engine.generate(f"{request_id}-{i}", ids, options) for i, ids in enumerate(prompts)]
    pending: dict[asyncio.Future[EngineOutput], int] = {
        asyncio.ensure_future(anext(stream)): i for i, stream in enumerate(streams)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # In prompt order, so that the same outputs always come out in the same order.
            for read in sorted(done, key=pending.__getitem__):
                i = pending.pop(read)
                try:
                    out = read.result()
                except StopAsyncIteration:
                    continue
                yield i, out
                pending[asyncio.ensure_future(anext(streams[i]))] = i
    finally:
        for read in pending:
            read.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            with contextlib.suppress(Exception):
                await aclose(stream)


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close an async iterator if it can be closed (async generators can; closing one that
    drives an engine request aborts that request)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def ndjson_line(payload: dict[str, Any]) -> bytes:
    """One line of a newline-delimited JSON stream (Ollama's streams)."""
    return json_bytes(payload) + b"\n"


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one API dialect answers: its error body, how its streams are framed (SSE ``data:``
    frames or NDJSON lines), their media type and the bytes that end them."""

    name: str
    stream_end: bytes
    error_body: Callable[[APIError], dict[str, Any]]
    frame: Callable[[dict[str, Any]], bytes] = sse_frame
    media_type: str = "text/event-stream"


def _openai_error(error: APIError) -> dict[str, Any]:
    return error.to_payload()  # the subclass's own shape (a 500 hides its message)


OPENAI = Dialect("openai", DONE_FRAME, _openai_error)


async def with_error_frame(
    frames: AsyncIterator[bytes], dialect: Dialect = OPENAI
) -> AsyncIterator[bytes]:
    """``frames``; an error mid-stream becomes a last error frame in the dialect's shape (the
    dialect's stream end follows from ``SSEResponse``)."""
    try:
        async for frame in frames:
            yield frame
    except Exception as exc:
        error = as_api_error(exc)
        _log_failure(error, exc)
        yield dialect.frame(dialect.error_body(error))
    finally:
        await aclose(frames)


async def first_then_rest(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pull the first frame before the response starts, so that a request the engine refuses at
    once still gets a proper HTTP status instead of a 200 stream holding an error."""
    try:
        first = await anext(frames)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await aclose(frames)
        raise

    async def rest() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        try:
            async for frame in frames:
                yield frame
        finally:
            await aclose(frames)

    return rest()


class SSEResponse(StreamingResponse):
    """A stream that always listens for the client's disconnect (whatever ASGI spec version the
    server speaks) and always closes its iterator, so engine requests are aborted at once.
    ``end`` (``[DONE]`` for OpenAI streams) goes out in the same write as the end of the body."""

    media_type = "text/event-stream"

    def __init__(
        self, frames: AsyncIterator[bytes], end: bytes = b"", media_type: str | None = None
    ) -> None:
        super().__init__(
            frames,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type=media_type,
        )
        self.end = end

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})  # fmt: skip
        async for frame in self.body_iterator:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": self.end, "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                # OSError: the client went away while we were sending
                with contextlib.suppress(OSError):
                    await self.stream_response(send)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await aclose(self.body_iterator)  # type: ignore[arg-type]


async def until_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` unless the client disconnects first, in which case it is cancelled (and with
    it the engine requests it started)."""
    task = asyncio.ensure_future(work())

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone()
    return task.result()


class ResponseBuilder(Protocol):
    def frames(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> AsyncIterator[bytes]: ...

    # One JSON body: an object, or an array where a dialect answers several results so.
    async def collect(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> Any: ...


async def respond(
    request: Request,
    builder: ResponseBuilder,
    outputs: AsyncIterator[tuple[int, EngineOutput]],
    *,
    stream: bool,
    dialect: Dialect = OPENAI,
) -> Response:
    """A stream in the dialect's framing (SSE or NDJSON) or one JSON body; a client that leaves
    aborts the engine work either way.
    Errors before the response starts propagate (the app answers them in the route's dialect);
    errors mid-stream become the dialect's error frame."""
    if stream:
        frames = await until_disconnected(request, lambda: first_then_rest(builder.frames(outputs)))
        return SSEResponse(
            with_error_frame(frames, dialect), end=dialect.stream_end, media_type=dialect.media_type
        )
    return JSONResponse(await until_disconnected(request, lambda: builder.collect(outputs)))


class ClientGone(Exception):
    """The client disconnected before its response was ready; nothing is sent."""


def _log_failure(error: APIError, exc: BaseException) -> None:
    if error.status_code >= 500:
        logger.error("request failed: %s", error.message, exc_info=exc)
    else:
        logger.info("request rejected: %s", error.message)
