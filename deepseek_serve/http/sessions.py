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
from typing import Any, TypeVar

from starlette.requests import Request

from deepseek_serve.errors import InvalidRequestError, SupersededError
from deepseek_serve.http.observability import current_request
from deepseek_serve.http.streaming import aclose

SESSION_HEADER = "x-session-id"
MAX_SESSION_KEY = 256
T = TypeVar("T")

# The cancel message of a claim superseded while it waited for the engine.
_SUPERSEDED = "superseded by a newer request of the session"


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

    __slots__ = ("__weakref__", "_info", "_registry", "_waiter", "key", "superseded")

    def __init__(self, registry: SessionRegistry, key: str) -> None:
        self._registry = registry
        self.key = key
        self.superseded = False
        self._info = current_request()  # claimed in the request's own context
        # The task waiting in ``guard`` for the next output, if one is.
        self._waiter: asyncio.Task[Any] | None = None

    def supersede(self) -> None:
        if self.superseded:
            return
        self.superseded = True
        if self._info is not None:
            self._info.abort_reason = "superseded"
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            # Wake it where it waits for the engine; ``guard`` turns this into SupersededError.
            waiter.cancel(_SUPERSEDED)

    def release(self) -> None:
        self._registry.release(self)

    async def guard(self, outputs: AsyncIterator[T]) -> AsyncIterator[T]:
        """``outputs`` until this claim is superseded, then ``SupersededError``. Either way
        ``outputs`` is closed (which aborts its engine requests) and the claim released.

        Outputs are pulled only when the consumer asks for the next one (no task reads ahead
        into a queue): while a slow client's previous frame is still being sent, vLLM merges the
        engine's new outputs into one, which then goes out as one frame."""
        try:
            while True:
                if self.superseded:
                    raise SupersededError()
                task = asyncio.current_task()
                self._waiter = task
                try:
                    item = await anext(outputs)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError as exc:
                    if task is None or not self.superseded or _SUPERSEDED not in exc.args:
                        raise
                    # Our cancel ends here; another one pending (the client left) goes on.
                    # (Python 3.10 counts no cancels: there, one cancel is one exception.)
                    uncancel = getattr(task, "uncancel", None)
                    if uncancel is not None and uncancel() > 0:
                        raise
                    raise SupersededError() from None
                finally:
                    self._waiter = None
                yield item
        finally:
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
