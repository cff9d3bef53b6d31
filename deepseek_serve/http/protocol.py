"""The HTTP/1.1 connection: uvicorn's h11 protocol with the request head bounded while it is read.

uvicorn's httptools protocol (its default when httptools is installed) buffers a request head
until it ends, however long: one client sending a never-ending header held the event loop for a
minute and grew the process by hundreds of MiB. h11 bounds what it buffers of an incomplete
event (``h11_max_incomplete_event_size``); on top of that this protocol, while the head is still
arriving:

- counts its lines and bytes: more than ``max_headers`` headers, or header lines longer in all
  than ``max_header_bytes`` plus their ``: `` and line ends, is a 431 before the head ends;
- bounds its request line: longer than ``max_request_target_bytes`` (plus the method and the
  HTTP version) is a 414 before the line ends;
- gives it ``header_timeout`` seconds from its first byte, or from the connection's opening:
  then 408 if part of a head came, or a plain close if nothing did.

Each refusal is a JSON error in the OpenAI shape with ``Connection: close``. The connection is
then half-closed and what the client still sends is read and dropped for a moment (a "lingering
close"), so that the client reads the answer instead of a connection reset.

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
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState as UvicornState

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
    settings: Settings, on_reject: Callable[[str], None] | None = None
) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``settings``.
    ``on_reject(reason)`` is called for each refusal (the server counts them in its metrics)."""

    class Bound(GuardedH11Protocol):
        max_headers = settings.max_headers
        max_request_line = settings.max_request_target_bytes + _REQUEST_LINE_EXTRA
        max_head_bytes = head_bytes_bound(settings)
        max_header_bytes = settings.max_header_bytes
        # The header lines as sent: names and values (what the gate counts) plus ": " and CRLF.
        max_header_section = settings.max_header_bytes + 4 * settings.max_headers + 2
        header_timeout = settings.header_timeout
        report = staticmethod(on_reject or (lambda reason: None))

    return Bound


class GuardedH11Protocol(H11Protocol):
    max_headers: int
    max_request_line: int
    max_head_bytes: int
    max_header_bytes: int
    max_header_section: int
    header_timeout: float
    report: Callable[[str], None]

    def __init__(
        self,
        config: Config,
        server_state: UvicornState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the head now arriving, as far as counted
        self._head_lines = 0
        self._request_line: int | None = None  # its length, once its end came
        self._tail = b""  # the head's last two bytes so far (a blank line may span chunks)
        self._dropped = 0  # bytes read and dropped after a refusal

    # --- the connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            # Refused: what still comes is dropped, up to a point, until the close.
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        if self.conn.their_state is h11.IDLE:  # a head is arriving: check it before h11 has it
            self._unset_keepalive_if_required()
            self._start_head_timer()
            if not self._head_ok(data):
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

    # --- the head being read ---

    def _head_ok(self, data: bytes) -> bool:
        """Count the head's part of ``data``; refuse at once if the head breaks a limit."""
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

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes or self.conn.trailing_data[0]:
            error = RequestTimeoutError(
                f"The request head did not arrive within {self.header_timeout:g} s."
            )
            self._refuse(error, "header_timeout")
        else:
            # Opened and silent: no request to answer.
            logger.debug("closing a connection that sent nothing for %g s", self.header_timeout)
            self.report("header_timeout")
            self.transport.close()

    # --- refusing ---

    def _refuse(self, error: APIError, reason: str) -> None:
        """Answer ``error`` outside h11 (no request was parsed), then close, lingering."""
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        logger.info("refused a request head from %s: %d %s", client, error.status_code, error)
        self.report(reason)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
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
