"""The Starlette application: ``create_app(settings, engine, tokenizer)``.

A request goes: ``http.observability.RequestContext`` (request id, access log, metrics) -> CORS
when configured -> ``http.gate.Gate`` (size caps, API key, rate limits, backpressure) ->
``routes/<dialect>/`` (``http.state.open_request``: body, model, readiness, session) ->
``prompts.validation.Validator`` (DeepSeek rendering, tokenization, every limit) ->
``http.tracking.TrackedEngine`` -> ``engine.Engine`` -> the dialect's formatter ->
``http.streaming.respond`` (JSON or SSE, disconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deepseek_serve.engine import Engine
from deepseek_serve.errors import APIError, InternalError, MethodNotAllowedError, NotFoundError
from deepseek_serve.http.gate import Gate
from deepseek_serve.http.lifecycle import watch_engine
from deepseek_serve.http.observability import RequestContext
from deepseek_serve.http.state import ServerState, server_state
from deepseek_serve.http.streaming import ClientGone
from deepseek_serve.prompts.tokenizer import PromptTokenizer
from deepseek_serve.prompts.validation import Validator
from deepseek_serve.routes import all_routes, dialects
from deepseek_serve.settings import Settings

logger = logging.getLogger(__name__)

PostStartCheck = Callable[[Engine], Awaitable[None]]


def create_app(
    settings: Settings,
    engine: Engine,
    tokenizer: PromptTokenizer,
    *,
    post_start_check: PostStartCheck | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """The app serving ``engine``. The engine starts in the background once the app starts, so
    ``/health`` answers 503 while the model loads; ``post_start_check`` may refuse the started
    engine (raise), and ``on_fatal`` is told when the engine could not start or died."""
    state = ServerState.build(settings, engine, tokenizer)
    state.dialects = dialects()

    async def start_engine() -> None:
        try:
            await engine.start()
            if post_start_check is not None:
                await post_start_check(engine)
            state.validator = Validator.build(
                settings, tokenizer, engine.limits, state.context_cache
            )
            state.metrics.engine_healthy.set(1)
            logger.info(
                "serving %s (context window %d tokens) on http://%s:%d",
                state.model_name,
                engine.limits.max_model_len,
                settings.host,
                settings.port,
            )
        except Exception as exc:
            state.failed = exc
            logger.critical("the engine failed to start: %s", exc, exc_info=exc)
            if on_fatal is not None:
                on_fatal(exc)
            return
        await watch_engine(state, on_fatal or (lambda exc: None))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        starter = asyncio.create_task(start_engine())
        try:
            yield
        finally:
            starter.cancel()
            await asyncio.gather(starter, return_exceptions=True)
            await engine.shutdown()

    routes = all_routes()
    middleware = [
        Middleware(
            RequestContext,
            metrics=state.metrics,
            routes=[r.path for r in routes if hasattr(r, "path")],
        )
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                expose_headers=["X-Request-Id", "Retry-After"],
            )
        )
    middleware.append(Middleware(Gate, state=state))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            ClientGone: _client_gone,
            Exception: _unexpected,
        },
    )
    app.state.deepseek = state
    return app


def _answer(request: Request, error: APIError) -> Response:
    """``error`` in the error shape of the dialect the request's route speaks."""
    body = server_state(request).dialect(request.scope["path"]).error_body(error)
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    if exc.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return _answer(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: APIError
    if exc.status_code == 404:
        error = NotFoundError(f"No route {request.url.path!r}.")
    elif exc.status_code == 405:
        error = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path!r}.")
    else:
        error = APIError(str(exc.detail))
        error.status_code = exc.status_code
    error.headers = dict(exc.headers or {})
    return _answer(request, error)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return _answer(request, InternalError(str(exc)))
