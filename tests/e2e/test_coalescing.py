"""A client that reads nothing until the engine has finished still gets the whole stream, in
its shape (every token once, one finish_reason, the usage chunk last, then ``[DONE]``), over the
real vLLM CPU engine, with and without an editor session (``X-Session-Id``: the session guard
takes outputs only when the stream asks for them; llama.vscode and Continue send one id per
editor, research/clients.md).

Whether the backlog leaves in fewer frames depends on the sockets: vLLM merges the outputs the
server has not taken, and the server stops taking them only when a write has to wait. Here the
kernel's send buffer grows to 4 MiB (tcp_wmem), more than this stream, so no write waits and
frames stay one per token; tests/app/test_coalescing.py stalls the client's socket instead.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MODEL_NAME, LiveServer

TOKENS = 400


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


def _slow_stream(server: LiveServer, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    """SSE data lines of a streamed completion read only after the engine has finished."""
    host, port = server.base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n{head}\r\n"
    ).encode() + payload
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect((host, int(port)))
        sock.sendall(request)
        deadline = time.monotonic() + 120
        time.sleep(0.5)
        while server.requests_in_engine() and time.monotonic() < deadline:
            time.sleep(0.2)
        sock.settimeout(60)
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
    head_bytes, _, rest = bytes(data).partition(b"\r\n\r\n")
    assert head_bytes.startswith(b"HTTP/1.1 200"), head_bytes
    text = _dechunk(rest).decode()
    assert text.endswith("\n\n")
    return [frame.removeprefix("data: ") for frame in text.split("\n\n") if frame]


@pytest.mark.parametrize("session", [None, "editor-1"])
def test_a_client_that_falls_behind_gets_the_whole_stream(
    server: LiveServer, session: str | None
) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": "def fibonacci(n):",
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": 0,  # one entry per token, even for a token whose text is still partial
    }
    headers = {"X-Session-Id": session} if session else {}
    frames = _slow_stream(server, body, headers)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == TOKENS
    content = chunks[:-1]
    assert all(len(c["choices"]) == 1 and c["usage"] is None for c in content)
    per_frame = [len(c["choices"][0]["logprobs"]["tokens"]) for c in content]
    assert sum(per_frame) == TOKENS  # every token once
    finishes = [c["choices"][0]["finish_reason"] for c in content]
    assert finishes[-1] == "length" and finishes.count(None) == len(finishes) - 1
    assert all(n >= 1 for n in per_frame)
    server.wait_engine_idle()


def test_several_prompts_stream_and_abort_over_the_real_engine(server: LiveServer) -> None:
    """Each prompt's stream is read by its own pending read (not a queue filled ahead): all of
    them finish, and a client that leaves mid-stream aborts every one in the engine."""
    body = {
        "model": MODEL_NAME,
        "prompt": ["def add(a, b):", "class Stack:", "import os\n"],
        "max_tokens": 24,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        frames = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 3 * 24
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    assert sorted(i for i, f in finishes if f is not None) == [0, 1, 2]
    assert all(f in (None, "length") for _, f in finishes)
    server.wait_engine_idle()

    long = {**body, "max_tokens": 2000}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=long, timeout=120) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # The client left after a few frames: all three engine requests end.
    server.wait_engine_idle(timeout=30)
