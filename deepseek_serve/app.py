"""The Starlette application: ``create_app(settings, engine, tokenizer)``.

A request goes: ``observability.RequestContext`` (request id, access log, metrics) -> CORS when
configured -> ``gate.Gate`` (size caps, API key, rate limits, backpressure) ->
``routes/<concept>.py`` -> ``protocol.parse_body`` (validation) ->
``prompts.PromptBuilder`` (DeepSeek rendering, tokenization, limits) -> ``engine.Engine`` ->
``formatting`` (OpenAI JSON / SSE chunks) -> ``streaming`` (SSE, disconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deepseek_serve.engine import Engine
from deepseek_serve.errors import APIError, InternalError, MethodNotAllowedError, NotFoundError
from deepseek_serve.gate import Gate
from deepseek_serve.lifecycle import watch_engine
from deepseek_serve.observability import RequestContext
from deepseek_serve.prompts import PromptBuilder
from deepseek_serve.routes import all_routes
from deepseek_serve.settings import Settings
from deepseek_serve.state import ServerState
from deepseek_serve.streaming import ClientGone
from deepseek_serve.tokenizer import PromptTokenizer

logger = logging.getLogger(__name__)

PostStartCheck = Callable[[Engine], None]


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

    async def start_engine() -> None:
        try:
            await engine.start()
            if post_start_check is not None:
                post_start_check(engine)
            state.prompts = PromptBuilder(
                tokenizer,
                engine.limits,
                settings.default_completion_max_tokens,
                settings.max_tokens_limit,
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


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    if exc.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return JSONResponse(exc.to_payload(), status_code=exc.status_code, headers=exc.headers)


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
    return JSONResponse(error.to_payload(), status_code=error.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    error = InternalError(str(exc))
    return JSONResponse(error.to_payload(), status_code=500)
