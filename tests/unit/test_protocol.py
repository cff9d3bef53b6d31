"""The HTTP connection protocol (http/protocol.py) over an in-memory transport: a head is
bounded while it arrives, whatever the chunking; heads within the limits pass.

The same against a real server on a port: tests/e2e/test_hostile_clients.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState as UvicornState

from deepseek_serve.http.protocol import (
    GuardedH11Protocol,
    HeadGuard,
    guarded_protocol,
    head_bytes_bound,
)
from deepseek_serve.settings import Settings
from tests.app.conftest import settings_for


class Transport(asyncio.Transport):
    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closed = False
        self.eof = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default


class CountingParser:
    """httptools' parser, counting the bytes it is given."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


PARSERS = ["httptools", "h11"]


def connect(
    settings: Settings,
    reported: list[str] | None = None,
    parser: str = "httptools",
    app: Any = None,
) -> Transport:
    config = uvicorn.Config(
        app or ok_app,
        http=guarded_protocol(
            settings,
            (reported if reported is not None else []).append,
            parser,  # type: ignore[arg-type]
        ),
        h11_max_incomplete_event_size=head_bytes_bound(settings),
        log_config=None,
    )
    config.load()
    protocol_class = config.http_protocol_class
    protocol = protocol_class(config=config, server_state=UvicornState(), app_state={})
    assert isinstance(protocol, HeadGuard)
    if not isinstance(protocol, GuardedH11Protocol):
        protocol.parser = CountingParser(protocol.parser)
    transport = Transport(protocol)
    protocol.connection_made(transport)
    return transport


def feed(transport: Transport, data: bytes, chunk: int) -> int:
    """Feed ``data`` in chunks until the server answers; the bytes fed."""
    fed = 0
    for i in range(0, len(data), chunk):
        if transport.written or transport.closed:
            break
        transport.protocol.data_received(data[i : i + chunk])
        fed += len(data[i : i + chunk])
    return fed


def status(transport: Transport) -> int:
    assert transport.written.startswith(b"HTTP/1.1 "), bytes(transport.written[:200])
    return int(transport.written.split(b" ", 2)[1])


SETTINGS = settings_for()
BOUND = head_bytes_bound(SETTINGS)


@pytest.mark.parametrize("chunk", [1, 1000, 65536, 262144])
@pytest.mark.parametrize("parser", PARSERS)
async def test_a_header_that_never_ends_is_a_431_after_the_bound(chunk: int, parser: str) -> None:
    reported: list[str] = []
    transport = connect(SETTINGS, reported, parser)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Flood: " + b"a" * (4 << 20)
    fed = feed(transport, head, chunk)
    section = SETTINGS.max_header_bytes + 4 * SETTINGS.max_headers + 2
    assert status(transport) == 431
    assert b"Request headers exceed 16384 bytes" in transport.written
    assert b"connection: close" in transport.written
    assert transport.eof and not transport.closed  # lingering: the client reads the answer
    assert fed <= len(b"GET /health HTTP/1.1\r\n") + section + chunk  # in the crossing chunk
    if isinstance(transport.protocol, GuardedH11Protocol):
        # h11 was never handed more than the bound: the crossing chunk was not passed on.
        assert len(transport.protocol.conn.trailing_data[0]) <= BOUND
    else:
        assert transport.protocol.parser.fed <= BOUND  # the same for httptools
    assert reported == ["too_large"]
    # What the client still sends is dropped; past a megabyte, the connection closes.
    transport.protocol.data_received(b"a" * (2 << 20))
    assert transport.closed


@pytest.mark.parametrize("chunk", [1, 4096, 65536])
@pytest.mark.parametrize("parser", PARSERS)
async def test_a_request_target_that_never_ends_is_a_414(chunk: int, parser: str) -> None:
    transport = connect(SETTINGS, parser=parser)
    fed = feed(transport, b"GET /health?q=" + b"a" * (1 << 20), chunk)
    assert status(transport) == 414
    assert fed <= SETTINGS.max_request_target_bytes + 64 + chunk


@pytest.mark.parametrize("parser", PARSERS)
async def test_more_headers_than_allowed_are_a_431_before_the_head_ends(parser: str) -> None:
    transport = connect(SETTINGS, parser=parser)
    feed(transport, b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"A: b\r\n" * 200, 7)
    assert status(transport) == 431
    assert b"exceed 100 headers" in transport.written


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 4096])
@pytest.mark.parametrize("parser", PARSERS)
async def test_heads_at_the_limits_pass_whatever_the_chunking(chunk: int, parser: str) -> None:
    target = b"/health?q=" + b"a" * (SETTINGS.max_request_target_bytes - 11)
    headers = b"".join(b"h%d: v\r\n" % i for i in range(SETTINGS.max_headers - 1))
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    body = b'{"a": 1}'
    post = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    # Header names and values of exactly max_header_bytes, as the gate counts them.
    big = b"x" * (SETTINGS.max_header_bytes - len(b"host" + b"x" + b"x-big"))
    large = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n"
    for data in (request, post, large):
        transport = connect(SETTINGS, parser=parser)
        feed(transport, data, chunk)
        for _ in range(20):
            if transport.written:
                break
            await asyncio.sleep(0.01)
        assert status(transport) == 200
        transport.close()


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_slow_head_gets_a_408_and_a_silent_connection_is_closed(parser: str) -> None:
    settings = settings_for(header_timeout=0.2)
    reported: list[str] = []
    slow = connect(settings, reported, parser)
    silent = connect(settings, reported, parser)
    slow.protocol.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.5)
    assert status(slow) == 408
    assert b"did not arrive within 0.2 s" in slow.written
    assert silent.closed and not silent.written
    assert sorted(reported) == ["header_timeout", "header_timeout"]


@pytest.mark.parametrize("parser", PARSERS)
async def test_the_head_timer_starts_again_for_the_next_request(parser: str) -> None:
    settings = settings_for(header_timeout=0.2)
    transport = connect(settings, parser=parser)
    transport.protocol.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)  # the first request is answered; the head timer is not running
    assert status(transport) == 200 and not transport.closed
    transport.written.clear()
    transport.protocol.data_received(b"GET /health HTTP/1.1\r\n")
    await asyncio.sleep(0.5)
    assert status(transport) == 408


class StreamingApp:
    """Streams for two seconds; ``done`` when it has returned."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(100):
                chunk = {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}
                await send(chunk)
                await asyncio.sleep(0.02)
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.done.set()


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_head_sent_while_a_response_streams_never_breaks_into_it(parser: str) -> None:
    settings = settings_for(header_timeout=0.2)
    app = StreamingApp()
    transport = connect(settings, parser=parser, app=app)
    transport.protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    transport.protocol.data_received(b"GET /next HTTP/1.1\r\nHost: x\r\n")  # and stalls
    await asyncio.sleep(0.6)  # past the head timeout, while the response still streams
    assert bytes(transport.written).count(b"HTTP/1.1 ") == 1
    assert not transport.closed
    if parser == "h11":
        # h11 holds a pipelined head unparsed and uvicorn stops reading until the response ends.
        assert transport.paused
    else:
        # httptools parses on: a pipelined head that breaks a limit closes the connection,
        # unanswered.
        transport.protocol.data_received(b"X-A: b\r\n" * 200)
        assert transport.closed
        assert bytes(transport.written).count(b"HTTP/1.1 ") == 1
    transport.close()
    await asyncio.wait_for(app.done.wait(), 10)
