"""The HTTP/1.1 connection: uvicorn's protocols with the request head bounded while it is read.

uvicorn's httptools protocol buffers a request head until it ends, however long: one client
sending a never-ending header held the event loop for a minute and grew the process by hundreds
of MiB (its h11 protocol bounds what it buffers, ``h11_max_incomplete_event_size``). The
protocols here check every chunk of a head before the parser gets it:

- its lines and bytes: more than ``max_headers`` headers, or header lines longer in all than
  ``max_header_bytes`` plus their ``: `` and line ends, is a 431 before the head ends;
- its request line: longer than ``max_request_target_bytes`` (plus the method and the HTTP
  version) is a 414 before the line ends;
- its time: ``header_timeout`` seconds from its first byte, or from the connection's opening;
  then 408 if part of a head came, or a plain close if nothing did.

Each refusal is a JSON error in the OpenAI shape with ``Connection: close``. The connection is
then half-closed and what the client still sends is read and dropped for a moment (a "lingering
close"), so that the client reads the answer instead of a connection reset.

``GuardedHttpToolsProtocol`` (httptools, uvicorn's faster parser: less API-process CPU per
streamed request, see ``bench.http_parser``) is what the server runs; ``GuardedH11Protocol``
(pure Python, with h11's own bound behind ours) is the same over h11.

The gate (``http.gate``) still checks the parsed head exactly (header count, header bytes,
target length): these checks bound what is buffered; the gate's give the precise answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deepseek_serve.errors import (
    APIError,
    HeadersTooLargeError,
    InvalidRequestError,
    RequestTimeoutError,
    URITooLongError,
)
from deepseek_serve.settings import Settings

logger = logging.getLogger(__name__)

# How long, and how much, a refused connection keeps reading (and dropping) before it closes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
# The end of a head: an empty line (h11 accepts bare LF line ends too).
_BLANK_LINE = re.compile(rb"\n\r?\n")
# The request line besides its target: "PROPPATCH " and " HTTP/1.1\r\n", with room to spare.
_REQUEST_LINE_EXTRA = 64


def head_bytes_bound(settings: Settings) -> int:
    """The most bytes of a request head: the request line, ``max_headers`` headers of
    ``max_header_bytes`` in all with their ``: `` and line ends, and the blank line."""
    return (
        settings.max_request_target_bytes
        + _REQUEST_LINE_EXTRA
        + settings.max_header_bytes
        + 4 * settings.max_headers
        + 2
    )


def guarded_protocol(
    settings: Settings,
    on_reject: Callable[[str], None] | None = None,
    parser: Literal["httptools", "h11"] = "httptools",
) -> type[HeadGuard]:
    """The protocol class uvicorn instantiates per connection, bound to ``settings``.
    ``on_reject(reason)`` is called for each refusal (the server counts them in its metrics)."""
    base: type[HeadGuard]
    if parser == "httptools":
        base = GuardedHttpToolsProtocol
    elif parser == "h11":
        base = GuardedH11Protocol
    else:
        raise ValueError(f"unknown HTTP parser {parser!r}")

    class Bound(base):  # type: ignore[valid-type,misc]
        max_headers = settings.max_headers
        max_request_line = settings.max_request_target_bytes + _REQUEST_LINE_EXTRA
        max_head_bytes = head_bytes_bound(settings)
        max_header_bytes = settings.max_header_bytes
        # The header lines as sent: names and values (what the gate counts) plus ": " and CRLF.
        max_header_section = settings.max_header_bytes + 4 * settings.max_headers + 2
        header_timeout = settings.header_timeout
        report = staticmethod(on_reject or (lambda reason: None))

    return Bound


class HeadGuard(asyncio.Protocol):
    """What both protocols share: counting a head's chunks, its timer, refusing. A protocol
    calls ``_guard_head(data)`` with each chunk while a head is arriving, and tells when one
    is complete (``_end_head``)."""

    max_headers: int
    max_request_line: int
    max_head_bytes: int
    max_header_bytes: int
    max_header_section: int
    header_timeout: float
    report: Callable[[str], None]

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # uvicorn's protocol (next in the MRO) takes (config, server_state, app_state, _loop).
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the head now arriving, as far as counted
        self._head_lines = 0
        self._request_line: int | None = None  # its length, once its end came
        self._tail = b""  # the head's last two bytes so far (a blank line may span chunks)
        self._dropped = 0  # bytes read and dropped after a refusal

    def _reading_head(self) -> bool:
        raise NotImplementedError

    # Before the parser's protocol class in the MRO: super() is uvicorn's protocol.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_guard()
        super().connection_lost(exc)

    def _stop_guard(self) -> None:
        for timer in (self._head_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = None

    def _lingering(self, data: bytes) -> bool:
        """Refused: what still comes is dropped, up to a point, until the close."""
        if self._linger is None:
            return False
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES:
            self.transport.close()
        return True

    def _guard_head(self, data: bytes) -> bool:
        """Count the head's part of ``data``; refuse at once if the head breaks a limit."""
        self._start_head_timer()
        joined = self._tail + data
        blank = _BLANK_LINE.search(joined)
        part = data if blank is None else data[: max(0, blank.end() - len(self._tail))]
        self._tail = joined[-2:]
        if self._request_line is None:
            end = part.find(b"\n")
            if end >= 0:
                self._request_line = self._head_bytes + end
        self._head_bytes += len(part)
        self._head_lines += part.count(b"\n")
        line = self._head_bytes if self._request_line is None else self._request_line
        # Header lines: not the request line, nor the blank line that ends the head.
        headers = self._head_lines - 1 - (blank is not None)
        section = 0 if self._request_line is None else self._head_bytes - self._request_line - 1
        error: APIError
        if line > self.max_request_line:
            limit = self.max_request_line - _REQUEST_LINE_EXTRA
            error = URITooLongError(f"The request target exceeds {limit} bytes.")
        elif headers > self.max_headers:
            error = HeadersTooLargeError(f"Request headers exceed {self.max_headers} headers.")
        elif section > self.max_header_section:
            error = HeadersTooLargeError(f"Request headers exceed {self.max_header_bytes} bytes.")
        else:
            return True
        self._refuse(error, "too_large")
        return False

    def _end_head(self) -> None:
        self._head_bytes = self._head_lines = 0
        self._request_line = None
        self._tail = b""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _responding(self) -> bool:
        """A response is being sent (a client may pipeline its next head meanwhile)."""
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head():
            return
        if self._responding():
            self._start_head_timer()  # the next head's time runs once this response is sent
            return
        if self._head_bytes:
            error = RequestTimeoutError(
                f"The request head did not arrive within {self.header_timeout:g} s."
            )
            self._refuse(error, "header_timeout")
        else:
            # Opened and silent: no request to answer.
            logger.debug("closing a connection that sent nothing for %g s", self.header_timeout)
            self.report("header_timeout")
            self.transport.close()

    def _refuse(self, error: APIError, reason: str) -> None:
        """Answer ``error`` outside the parser (no request was parsed), then close, lingering."""
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        logger.info("refused a request head from %s: %d %s", client, error.status_code, error)
        self.report(reason)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._responding():
            # A pipelined head broke a limit while a response streams: no answer can be put
            # between that response's bytes; the connection is closed.
            self.transport.close()
            return
        body = json.dumps(error.to_payload()).encode()
        phrase = HTTPStatus(error.status_code).phrase
        head = (
            f"HTTP/1.1 {error.status_code} {phrase}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)


class GuardedHttpToolsProtocol(HeadGuard, HttpToolsProtocol):
    _in_head = True  # the parser is before or inside a request head (set per connection)

    def _reading_head(self) -> bool:
        return self._in_head

    def data_received(self, data: bytes) -> None:
        if self._lingering(data):
            return
        if self._in_head:
            self._unset_keepalive_if_required()
            if not self._guard_head(data):
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._end_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next is the next request's head
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidRequestError("Invalid HTTP request."), "bad_request")


class GuardedH11Protocol(HeadGuard, H11Protocol):
    def _reading_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def data_received(self, data: bytes) -> None:
        if self._lingering(data):
            return
        if self.conn.their_state is h11.IDLE:  # a head is arriving: check it before h11 has it
            self._unset_keepalive_if_required()
            if not self._guard_head(data):
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            # A whole head came (h11 made a Request of it): the app has the request now.
            self._end_head()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the bytes: a head over its bound (431), or not HTTP/1.1 at all (400)."""
        if len(self.conn.trailing_data[0]) > self.max_head_bytes:
            error: APIError = HeadersTooLargeError(
                f"The request head exceeds {self.max_head_bytes} bytes."
            )
            self._refuse(error, "too_large")
        else:
            self._refuse(InvalidRequestError("Invalid HTTP request."), "bad_request")
