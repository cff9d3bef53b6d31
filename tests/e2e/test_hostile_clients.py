"""Hostile clients against a real server process on a port: a never-ending head, slow heads
(slowloris), slow bodies holding in-flight slots, a client leaving mid-body, and the bodies that
once got a 500.

The flood, slowloris and slow-body tests run against the instant-engine server
(``python -m deepseek_serve.bench.ceiling instant``): our whole app, HTTP protocol and uvicorn
settings as ``deepseek-serve`` runs them, over an engine that answers at once, so that short
timeouts and a small in-flight bound can be set per test module without starting vLLM. The nasty
bodies also go to the real-engine session server.

Each test is bounded in bytes and time: it asserts what the server does (status, connection
closed, bytes it let through), and prints how long ``/health`` took meanwhile without asserting
it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import ROOT, LiveServer, free_port

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 4.0
IN_FLIGHT = 4
CHUNK = b"a" * 65536


@dataclass
class InstantServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock


@pytest.fixture(scope="module")
def instant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstantServer]:
    root = tmp_path_factory.mktemp("hostile")
    port = free_port()
    log_path = root / "server.log"
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        DEEPSEEK_SERVE_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        DEEPSEEK_SERVE_BODY_TIMEOUT=str(BODY_TIMEOUT),
        DEEPSEEK_SERVE_MAX_REQUESTS_IN_FLIGHT=str(IN_FLIGHT),
    )
    cmd = [sys.executable, "-m", "deepseek_serve.bench.ceiling", "instant"]
    cmd += ["--port", str(port), "--log-level", "info"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    server = InstantServer(port, proc, log_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, server.log()[-3000:]
            try:
                if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_response(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """What the server sends until it closes (or ``timeout`` passes, or a reset)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def read_all(socks: list[socket.socket], timeout: float) -> list[bytes]:
    """What the server sends on each socket until it closes it, all read at once, for at most
    ``timeout`` seconds in all (a socket still open then keeps what it got)."""
    got = {sock: b"" for sock in socks}
    open_ = set(socks)
    deadline = time.monotonic() + timeout
    while open_ and (left := deadline - time.monotonic()) > 0:
        for sock in select.select(list(open_), [], [], left)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                got[sock] += data
            else:
                open_.discard(sock)
    return [got[sock] for sock in socks]


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


class HealthProbe:
    """GET /health on fresh connections, in a thread, while something hostile runs."""

    def __init__(self, server: InstantServer) -> None:
        self.url = f"{server.base_url}/health"
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                status = httpx.get(self.url, timeout=60).status_code
            except httpx.TransportError:
                status = 0
            self.statuses.append(status)
            self.latencies.append(time.monotonic() - start)
            time.sleep(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def report(self, what: str) -> None:
        worst = max(self.latencies, default=float("nan"))
        print(f"\n{what}: /health {len(self.statuses)} times, slowest {worst * 1000:.0f} ms")


def flood(server: InstantServer, prefix: bytes, total: int) -> tuple[int, bytes]:
    """Send ``prefix`` and then up to ``total`` bytes of one header line that never ends,
    reading whatever the server answers meanwhile; stop when the server closes.
    Returns the bytes sent and the answer."""
    sock = server.connect()
    sent = 0
    answer = b""
    try:
        sock.sendall(prefix)
        while sent < total:
            sock.sendall(CHUNK)
            sent += len(CHUNK)
            if select.select([sock], [], [], 0)[0]:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer += read_response(sock)
    sock.close()
    return sent, answer


FLOOD = 128 << 20  # what once held the server for a minute and grew it by 200 MiB


@pytest.mark.parametrize(
    ("prefix", "status", "message"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Flood: ", 431, b"headers exceed 16384 bytes"),
        (b"GET /health?q=", 414, b"request target exceeds"),
    ],
    ids=["header", "request-target"],
)
def test_a_never_ending_head_is_refused_while_it_arrives(
    instant: InstantServer, prefix: bytes, status: int, message: bytes
) -> None:
    process = psutil.Process(instant.process.pid)
    rss_before = process.memory_info().rss
    with HealthProbe(instant) as probe:
        sent, answer = flood(instant, prefix, FLOOD)
    probe.report(f"{sent >> 20} MiB of one {status} head")
    grown = process.memory_info().rss - rss_before
    print(f"server grew by {grown >> 20} MiB")
    assert status_of(answer) == status, answer[:300]
    assert message in answer
    assert b"connection: close" in answer.lower()
    # The server answered and closed long before the flood was all sent: it read at most a
    # bounded head, a lingering megabyte, and what the two kernels' socket buffers hold.
    assert sent < FLOOD // 2, sent
    assert probe.statuses and set(probe.statuses) == {200}, probe.statuses
    assert httpx.get(f"{instant.base_url}/health").status_code == 200


def test_too_many_headers_are_refused_before_the_head_ends(instant: InstantServer) -> None:
    sock = instant.connect()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150)  # no blank line
    answer = read_response(sock)
    sock.close()
    assert status_of(answer) == 431
    assert b"exceed 100 headers" in answer


def test_slowloris_heads_are_answered_408_and_closed(instant: InstantServer) -> None:
    partial = [instant.connect() for _ in range(200)]
    silent = [instant.connect() for _ in range(20)]
    for sock in partial:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    with HealthProbe(instant) as probe:
        # Each one is answered when its head's time is up; bounded by far more than that.
        answers = read_all(partial + silent, timeout=HEADER_TIMEOUT * 15)
    probe.report("200 slow heads")
    for sock in partial + silent:
        sock.close()
    assert [status_of(a) for a in answers[:200]] == [408] * 200
    assert all(b"did not arrive within" in a for a in answers[:200])
    # Connections that never sent a byte are closed without an answer.
    assert answers[200:] == [b""] * 20
    assert probe.statuses and set(probe.statuses) == {200}, probe.statuses


def slow_upload(server: InstantServer, path: str = "/v1/completions") -> socket.socket:
    """A POST that promises 60 bytes of body and sends 5."""
    sock = server.connect()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 60\r\n\r\n".encode()
        + b'{"pro'
    )
    return sock


def test_slow_bodies_hold_no_in_flight_slot_and_get_408(instant: InstantServer) -> None:
    uploads = [slow_upload(instant) for _ in range(2 * IN_FLIGHT)]
    time.sleep(0.5)  # they are all in the gate, waiting for their bodies
    body = {"model": "demo", "prompt": "def f(", "max_tokens": 4}
    started = time.monotonic()
    r = httpx.post(f"{instant.base_url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text  # not 503: slow uploads hold no slot
    # The uploads were still waiting (none answered yet) when that request was served.
    if time.monotonic() - started < BODY_TIMEOUT - 1:
        assert not select.select(uploads, [], [], 0)[0]
    answers = read_all(uploads, timeout=BODY_TIMEOUT * 10)
    for sock in uploads:
        sock.close()
    assert [status_of(a) for a in answers] == [408] * len(uploads)
    assert all(b"body did not arrive within" in a for a in answers)
    assert all(b"connection: close" in a.lower() for a in answers)


def test_a_client_leaving_mid_body_is_a_client_disconnect(instant: InstantServer) -> None:
    sock = slow_upload(instant, "/infill")
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 30
    while "client disconnected while sending the request body" not in instant.log():
        assert time.monotonic() < deadline, instant.log()[-3000:]
        time.sleep(0.1)
    log = instant.log()
    assert "POST /infill 499" in log
    assert "crashed" not in log and "Traceback" not in log, log[-3000:]
    assert httpx.get(f"{instant.base_url}/health").status_code == 200


# The seven bodies that got a 500 (issue 16): nesting, a 5000-digit integer, a Unicode digit
# as a logit_bias key.
DEEP_ARRAY = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
DEEP_OBJECT = '{"prompt": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}"
HUGE = "9" * 5000
NASTY = [
    ("/v1/completions", DEEP_ARRAY, None),
    ("/v1/completions", DEEP_OBJECT, None),
    ("/infill", DEEP_ARRAY, None),
    ("/infill", DEEP_OBJECT, None),
    ("/v1/completions", '{"prompt": "x", "max_tokens": ' + HUGE + "}", "max_tokens"),
    ("/api/v1/completion", '{"prompt": "x", "max_tokens": ' + HUGE + "}", "max_tokens"),
    ("/v1/completions", '{"prompt": "x", "logit_bias": {"\u00b2": 1}}', "logit_bias"),
    ("/infill", '{"input_prefix": "x", "logit_bias": {"\u00b2": 1}}', "logit_bias"),
    ("/v1/chat/completions", '{"messages": [], "logit_bias": {"\u00b2": 1}}', None),
]


def check_nasty_bodies(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for path, body, param in NASTY:
            r = http.post(path, content=body.encode(), headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body[:60], r.status_code, r.text[:300])
            if param is not None:
                error = r.json()["error"]
                assert error.get("param") == param, (path, error)
        assert http.get("/health").status_code == 200


def test_nasty_bodies_get_a_4xx_from_the_instant_server(instant: InstantServer) -> None:
    check_nasty_bodies(instant.base_url)


def test_nasty_bodies_get_a_4xx_from_the_real_server(server: LiveServer) -> None:
    before = len(server.log())
    check_nasty_bodies(server.base_url)
    assert "crashed" not in server.log()[before:]
