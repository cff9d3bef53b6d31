"""What operators see: Prometheus metrics, the request id, and logs (plain or JSON).

``RequestContext`` is the outermost middleware: it gives every request an id (the client's
``X-Request-Id`` when it is sane), echoes it, counts the request by route and status and writes
one access-log line. Code deeper down reads the id, and adds token counts, through
``current_request()``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from deepseek_serve.http.auth import ApiKey
    from deepseek_serve.http.quotas import Reservation

logger = logging.getLogger("deepseek_serve.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


@dataclass(slots=True)
class RequestInfo:
    """One HTTP request as the layers below the middleware see it."""

    request_id: str
    route: str
    key: ApiKey | None = None  # the API key it came with (set by the gate)
    reservation: Reservation | None = None  # tokens set aside for it under the key's limit
    prompt_tokens: int = 0
    generated_tokens: int = 0
    abort_reason: str | None = None  # why its engine work was ended early, when known


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "deepseek_serve_request", default=None
)


def current_request() -> RequestInfo | None:
    return _current.get()


class Metrics:
    """The server's own metrics, in a registry of their own; ``render`` adds vLLM's (which live
    in the process-wide default registry) and the process collectors."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "deepseek_serve_"
        self.requests = Counter(
            p + "requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            p + "request_duration_seconds",
            "End-to-end request latency, until the last byte.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "From engine submission to the first generated token.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            p + "inter_token_latency_seconds",
            "Time between successive outputs of one sequence.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            p + "prompt_tokens", "Prompt tokens submitted.", ["route"], registry=r
        )
        self.generation_tokens = Counter(
            p + "generation_tokens", "Tokens generated.", ["route"], registry=r
        )
        self.aborted = Counter(
            p + "requests_aborted",
            "Engine requests ended before they finished, by reason.",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            p + "requests_rejected",
            "Requests refused before reaching the engine, by reason.",
            ["reason"],
            registry=r,
        )
        # multiprocess_mode: how several API processes' values add up (ignored with one).
        self.in_flight = Gauge(
            p + "requests_in_flight",
            "Generation requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            p + "requests_waiting",
            "Engine requests submitted that have not produced a token yet.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.engine_healthy = Gauge(
            p + "engine_healthy",
            "1 while the engine serves, 0 otherwise.",
            registry=r,
            multiprocess_mode="livemin",
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several API processes (``api_processes``): every metric, ours and vLLM's, is in
            # per-process files, summed here (gauges as their multiprocess_mode says).
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry) + generate_latest(REGISTRY)


class RequestContext:
    """Request id, access log and per-route counters for every HTTP request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        path = scope["path"]
        route = path if path in self.routes else "unmatched"
        info = RequestInfo(request_id=request_id, route=route)
        token = _current.set(info)
        status = 500
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
            if status == 500 and not started:
                status = 499  # the client left before an answer (nginx's "client closed")
        finally:
            elapsed = time.perf_counter() - start
            _current.reset(token)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.duration.labels(route).observe(elapsed)
            logger.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                elapsed * 1000,
                extra={
                    "request_id": request_id,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "key": info.key.name if info.key is not None else None,
                    "prompt_tokens": info.prompt_tokens,
                    "generated_tokens": info.generated_tokens,
                },
            )


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) of an HTTP scope."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            info = _current.get()
            record.request_id = info.request_id if info is not None else None
        return True


def configure_logging(level: str, fmt: str, *, process: str | None = None) -> None:
    """Root logging for the server (uvicorn's loggers included): text, or one JSON object per
    line carrying the request id. ``process`` names one of several API processes in each line."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"process": process} if process else None,
            )
        )
    else:
        where = f" [{process}]" if process else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
