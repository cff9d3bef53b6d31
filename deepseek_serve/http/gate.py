"""What a request must get past before a route sees it, in this order: header and request-target
caps (exact, on the parsed head; ``http.protocol`` bounds the head while it arrives), shutdown,
API key (and, for ``/metrics``, the key's metrics permission), per-key rate limits, the body
(size-capped, whole, within ``body_timeout``), and the bound on generation requests in flight.
Token limits are reserved once the route has validated its request (``state.Opened.validate``)
and settled here when the request ends.

The body is read here, before the in-flight slot is taken, and replayed to the app: a client
that sends its body slowly, or stops halfway, holds only its own connection, never a slot.

One pure ASGI middleware, so streaming responses pass through untouched. Paths are matched
exactly on the decoded path the router itself routes on: ``/health/``, ``//health``,
``/%68ealth`` or a crafted ``Host`` header are simply not public paths.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepseek_serve.errors import (
    APIError,
    AuthenticationError,
    HeadersTooLargeError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ShuttingDownError,
    URITooLongError,
)
from deepseek_serve.http.auth import bearer_token
from deepseek_serve.http.observability import current_request, header
from deepseek_serve.http.state import ServerState

logger = logging.getLogger(__name__)


class _ClientGone(Exception):
    """The client disconnected before its body was complete."""


class Gate:
    def __init__(self, app: ASGIApp, *, state: ServerState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self.public = frozenset(settings.public_paths) | (
            {"/metrics"} if settings.public_metrics else frozenset()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, settings = self.state, self.state.settings
        headers = scope["headers"]
        if len(headers) > settings.max_headers or (
            sum(len(k) + len(v) for k, v in headers) > settings.max_header_bytes
        ):
            error: APIError = HeadersTooLargeError(
                f"Request headers exceed {settings.max_headers} headers or "
                f"{settings.max_header_bytes} bytes."
            )
            return await self._reject(error, "too_large", scope, receive, send)
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
        if target > settings.max_request_target_bytes:
            error = URITooLongError(
                f"The request target exceeds {settings.max_request_target_bytes} bytes."
            )
            return await self._reject(error, "too_large", scope, receive, send)

        path = scope["path"]
        public = path in self.public
        if state.draining and not public and path != "/metrics":
            return await self._reject(ShuttingDownError(), "shutting_down", scope, receive, send)

        key = None
        if not public and state.keys.enabled:
            token = bearer_token(header(scope, b"authorization"))
            key = state.keys.match(token) if token else None
            if key is None:
                error = AuthenticationError(
                    "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="deepseek_serve"'},
                )
                return await self._reject(error, "unauthorized", scope, receive, send)
            info = current_request()
            if info is not None:
                info.key = key
            if path == "/metrics":  # every tenant's traffic: for keys allowed to read it
                if not key.metrics:
                    error = PermissionDeniedError(
                        "This key may not read /metrics (key file option metrics=yes).",
                        code="permission_denied",
                    )
                    return await self._reject(error, "forbidden", scope, receive, send)
            else:  # a scrape every few seconds is not API use: no rate limit on it
                try:
                    await state.quotas.admit(key)
                except RateLimitError as exc:
                    return await self._reject(exc, "rate_limited", scope, receive, send)

        limit = settings.max_body_bytes
        length = header(scope, b"content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):  # not '²', '٣'
                error = InvalidRequestError("Content-Length is not a number.")
                return await self._reject(error, "bad_request", scope, receive, send)
            if int(length) > limit:
                error = PayloadTooLargeError(
                    f"The request body exceeds {limit} bytes.", headers={"Connection": "close"}
                )
                return await self._reject(error, "too_large", scope, receive, send)

        try:
            body = await asyncio.wait_for(_read_body(receive, limit), settings.body_timeout)
        except _ClientGone:
            logger.info("client disconnected while sending the request body")
            return
        except PayloadTooLargeError as exc:
            # The rest of the body is not read: the connection is closed after the answer.
            exc.headers["Connection"] = "close"
            return await self._reject(exc, "too_large", scope, receive, send)
        except asyncio.TimeoutError:
            error = RequestTimeoutError(
                f"The request body did not arrive within {settings.body_timeout:g} s."
            )
            return await self._reject(error, "body_timeout", scope, receive, send)
        replayed = False

        async def replay() -> Message:
            # The body the app reads; after it, the connection's own messages (a disconnect).
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if scope["method"] != "POST":
            await self.app(scope, replay, send)
            return

        # Every POST route generates: bound how many are admitted at once.
        if state.in_flight >= settings.max_requests_in_flight:
            error = OverloadedError(
                f"The server is at its limit of {settings.max_requests_in_flight} requests in "
                "flight; retry shortly.",
                retry_after=settings.retry_after_seconds,
            )
            return await self._reject(error, "overloaded", scope, receive, send)
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            await self.app(scope, replay, send)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
            info = current_request()
            if key is not None and info is not None:  # give back what it reserved and not used
                state.quotas.settle(
                    key, info.reservation, info.prompt_tokens + info.generated_tokens
                )

    async def _reject(
        self, error: APIError, reason: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.state.metrics.rejected.labels(reason).inc()
        body = self.state.dialect(scope["path"]).error_body(error)
        response = JSONResponse(body, error.status_code, headers=error.headers)
        await response(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or ``PayloadTooLargeError`` as soon as it passes ``limit``."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
