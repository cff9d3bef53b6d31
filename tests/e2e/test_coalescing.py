"""A stream whose client falls behind gets the tokens made meanwhile in one frame, over the real
vLLM CPU engine, with the stream's shape unchanged: every token once, one finish_reason, the
usage chunk last, then ``[DONE]``.

vLLM merges the outputs of a request that its consumer has not taken yet; the server takes the
next output only when the previous frame has been handed to the socket, so a client that reads
slowly (here: a 2 KiB receive buffer, not read until the engine is done) gets the backlog merged.
Requests of an editor session go through the session guard (``X-Session-Id``), which must not
read ahead either. Source of the session header: llama.vscode and Continue send one id per
editor (research/clients.md; ggml-org/llama.vscode src/llama-server.ts).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from tests.e2e.conftest import MODEL_NAME, LiveServer

TOKENS = 1500  # about 400 KB of frames: far more than the socket buffers on both ends hold


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
def test_a_client_that_falls_behind_gets_the_backlog_in_fewer_frames(
    server: LiveServer, session: str | None
) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": "def fibonacci(n):",
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    headers = {"X-Session-Id": session} if session else {}
    frames = _slow_stream(server, body, headers)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == TOKENS
    content = chunks[:-1]
    assert all(len(c["choices"]) == 1 and c["usage"] is None for c in content)
    ids = [i for c in content for i in c["choices"][0]["token_ids"]]
    assert len(ids) == TOKENS  # every token once
    finishes = [c["choices"][0]["finish_reason"] for c in content]
    assert finishes[-1] == "length" and finishes.count(None) == len(finishes) - 1
    # Merged: fewer frames than tokens, and some frame carries many tokens.
    assert len(content) < TOKENS
    assert max(len(c["choices"][0]["token_ids"]) for c in content) > 10
    server.wait_engine_idle()
