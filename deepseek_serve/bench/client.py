"""One streamed request against an OpenAI-compatible server, timed as ``vllm bench serve`` times it.

TTFT is the time to the first SSE chunk that carries ``choices`` (for chat that is the role delta
vLLM and we both send with the first token); every later such chunk adds one inter-token latency;
the latency (E2EL) ends at the last such chunk (the trailing usage chunk carries no token). Token
counts come from the server's ``usage`` (``stream_options.include_usage``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from deepseek_serve.bench.workloads import CHAT, BenchRequest


@dataclass(slots=True)
class RequestOutput:
    """Outcome of one request; field names follow vLLM's ``RequestFuncOutput``."""

    generated_text: str = ""
    success: bool = False
    latency: float = 0.0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_len: int = 0
    error: str = ""
    start_time: float = 0.0
    client_queue_time: float = 0.0
    status: int | None = None  # HTTP status; None when no response arrived
    cancelled: bool = False  # cancelled by the client on purpose (editor keystrokes)
    got_first_token: bool = False


class SSEParser:
    """Splits a byte stream into the ``data:`` payloads of its SSE events."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        events = []
        while True:
            cut = self._buf.find(b"\n\n")
            if cut < 0:
                break
            event, self._buf = self._buf[:cut], self._buf[cut + 2 :]
            for line in event.split(b"\n"):
                line = line.rstrip(b"\r")
                if line.startswith(b"data:"):
                    events.append(line[5:].lstrip(b" "))
        return events


def payload(
    req: BenchRequest, model: str, ignore_eos: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, **req.body}
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra)
    return body


async def send(
    session: aiohttp.ClientSession,
    base_url: str,
    req: BenchRequest,
    model: str,
    *,
    ignore_eos: bool = False,
    extra_body: dict[str, Any] | None = None,
    output: RequestOutput | None = None,
) -> RequestOutput:
    """Stream one request. Cancelling the task closes the connection (the server should abort);
    the partially filled ``output`` passed in keeps what had arrived."""
    out = output if output is not None else RequestOutput()
    out.prompt_len = req.prompt_len
    url = base_url.rstrip("/") + req.endpoint
    body = payload(req, model, ignore_eos, extra_body or {})
    chat = req.endpoint == CHAT
    text: list[str] = []
    start = time.perf_counter()
    out.start_time = start
    last = start
    try:
        async with session.post(url, json=body) as resp:
            out.status = resp.status
            if resp.status != 200:
                out.error = (await resp.text())[:500] or (resp.reason or "")
                return out
            parser = SSEParser()
            async for chunk in resp.content.iter_any():
                for data in parser.feed(chunk):
                    if data == b"[DONE]":
                        continue
                    now = time.perf_counter()
                    event = json.loads(data)
                    choices = event.get("choices")
                    if choices:
                        if out.got_first_token:
                            out.itl.append(now - last)
                        else:
                            out.got_first_token = True
                            out.ttft = now - start
                        last = now
                        choice = choices[0]
                        piece = choice["delta"].get("content") if chat else choice.get("text")
                        if piece:
                            text.append(piece)
                    elif event.get("error"):
                        out.error = json.dumps(event["error"])[:500]
                    usage = event.get("usage")
                    if usage:
                        out.output_tokens = int(usage.get("completion_tokens") or 0)
                        if usage.get("prompt_tokens") is not None:
                            out.prompt_len = int(usage["prompt_tokens"])
            out.success = out.got_first_token and not out.error
            if not out.got_first_token and not out.error:
                out.error = "the stream ended without a token chunk"
            out.latency = last - start
    except asyncio.CancelledError:
        out.cancelled = True
        out.latency = time.perf_counter() - start
        raise
    except Exception as exc:  # a failed request is a result, not a crash of the benchmark
        out.error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        out.generated_text = "".join(text)
    return out


def new_session(max_connections: int) -> aiohttp.ClientSession:
    """A pooled session; ``OPENAI_API_KEY`` becomes a bearer token, as in vLLM's benchmark."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    key = os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, headers=headers
    )


# The server's engine-side counters a run reports on, when the target exposes them.
ENGINE_COUNTERS = ("deepseek_serve_engine_abandoned_tokens_total", "vllm:generation_tokens_total")


async def engine_counters(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """``ENGINE_COUNTERS`` from the target's ``/metrics``, summed over labels; those it does not
    expose (or a ``/metrics`` it refuses) are missing."""
    try:
        async with session.get(base_url.rstrip("/") + "/metrics") as resp:
            if resp.status != 200:
                return {}
            text = await resp.text()
    except aiohttp.ClientError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ENGINE_COUNTERS:
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def waste_metrics(
    before: dict[str, float], after: dict[str, float], result: dict[str, Any]
) -> dict[str, float]:
    """Decoding nobody received (tokens for requests already ended) and the share of requests
    the client cancelled, over one run."""
    out = {"cancelled_request_share": result["cancelled"] / max(1, result["num_prompts"])}
    abandoned, generated = ENGINE_COUNTERS
    if abandoned in after and generated in after:
        lost = after[abandoned] - before.get(abandoned, 0.0)
        kept = after[generated] - before.get(generated, 0.0)
        out["abandoned_tokens"] = lost
        out["abandoned_token_share"] = lost / (lost + kept) if lost + kept else 0.0
    return out


async def first_model(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(base_url.rstrip("/") + "/v1/models") as resp:
        resp.raise_for_status()
        data = await resp.json()
    return str(data["data"][0]["id"])
