"""Editor sessions: a new completion from a session aborts the older one still running.

A client names its session with the ``X-Session-Id`` header or a ``session_id`` body field
(extension). Keys are scoped by the request's ``Authorization`` header, so one API key can never
cancel another's work. The registry lives in the server state; requests without a session key
pay nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import AsyncIterator
from typing import TypeVar

from starlette.requests import Request

from deepseek_serve.errors import InvalidRequestError, SupersededError
from deepseek_serve.http.observability import current_request
from deepseek_serve.http.streaming import aclose

SESSION_HEADER = "x-session-id"
MAX_SESSION_KEY = 256
T = TypeVar("T")

_END = object()
_SUPERSEDED = object()


def session_key(request: Request, body_value: str | None) -> str | None:
    """The request's session key (body field first, then header), scoped by its credentials."""
    value = body_value if body_value is not None else request.headers.get(SESSION_HEADER)
    if value is None:
        return None
    if not value or len(value) > MAX_SESSION_KEY:
        raise InvalidRequestError(
            f"A session id must have 1 to {MAX_SESSION_KEY} characters.", param="session_id"
        )
    scope = hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()[:16]
    return f"{scope}:{value}"


class Claim:
    """One request's hold on its session; superseded when a newer request of the session
    arrives."""

    __slots__ = ("__weakref__", "_registry", "key", "queue", "superseded")

    def __init__(self, registry: SessionRegistry, key: str) -> None:
        self._registry = registry
        self.key = key
        self.superseded = False
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def supersede(self) -> None:
        if not self.superseded:
            self.superseded = True
            self.queue.put_nowait(_SUPERSEDED)

    def release(self) -> None:
        self._registry.release(self)

    async def guard(self, outputs: AsyncIterator[T]) -> AsyncIterator[T]:
        """``outputs`` until this claim is superseded, then ``SupersededError``. Either way
        ``outputs`` is closed (which aborts its engine requests) and the claim released."""

        async def pump() -> None:
            try:
                async for item in outputs:
                    self.queue.put_nowait(item)
                self.queue.put_nowait(_END)
            except Exception as exc:  # handed to the consumer, which re-raises it
                self.queue.put_nowait(exc)

        task = asyncio.create_task(pump())
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                if item is _SUPERSEDED:
                    info = current_request()
                    if info is not None:
                        info.abort_reason = "superseded"
                    raise SupersededError()
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]  # anything else came from ``outputs``
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            with contextlib.suppress(Exception):
                await aclose(outputs)
            self.release()


class SessionRegistry:
    """The running request of each session: a claim supersedes the session's previous one."""

    def __init__(self) -> None:
        # Weak: a request that ends without releasing (its response never started) cannot leak.
        self._active: weakref.WeakValueDictionary[str, Claim] = weakref.WeakValueDictionary()

    def claim(self, key: str) -> Claim:
        claim = Claim(self, key)
        old = self._active.get(key)
        if old is not None:
            old.supersede()
        self._active[key] = claim
        return claim

    def release(self, claim: Claim) -> None:
        if self._active.get(claim.key) is claim:
            del self._active[claim.key]

    def __len__(self) -> int:
        return len(self._active)


def under_session(
    registry: SessionRegistry, key: str | None, outputs: AsyncIterator[T]
) -> AsyncIterator[T]:
    """``outputs`` under the session ``key`` (unchanged without one)."""
    if key is None:
        return outputs
    return registry.claim(key).guard(outputs)
