"""Ollama's API: ``/api/generate``, ``/api/chat``, ``/api/tags``, ``/api/show``,
``/api/version`` and the ``/`` probe, so that a client set up for Ollama needs only our URL.

Model names: any name is served by the one model this server runs (clients keep the name they
used with Ollama, e.g. ``deepseek-coder:6.7b-base``); a name other than the served one is logged
once as a warning, and answers echo the name asked for, as Ollama does.
"""

from __future__ import annotations

import logging
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from deepseek_serve.errors import InvalidRequestError
from deepseek_serve.http.body import parse_body
from deepseek_serve.http.state import ServerState, open_request, server_state
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.prompts.validation import ValidRequest
from deepseek_serve.routes.ollama import formatting
from deepseek_serve.routes.ollama.formatting import OllamaFormatter
from deepseek_serve.routes.ollama.protocol import (
    OLLAMA,
    ChatRequest,
    GenerateRequest,
    ShowRequest,
)

logger = logging.getLogger(__name__)

# The Ollama release whose API these routes follow (clients may check a minimum version).
OLLAMA_VERSION = "0.12.0"
_WARNED_NAMES_MAX = 64


def _model(request: Request, requested: str | None) -> str:
    """The name to echo; ``model is required`` as in Ollama when there is none."""
    if not requested:
        raise InvalidRequestError("model is required", param="model")
    state = server_state(request)
    served = state.model_name
    known = {served, formatting.tag_name(served), state.settings.model}
    app_state = request.app.state
    if not hasattr(app_state, "ollama_names_warned"):
        app_state.ollama_names_warned = set()
    warned: set[str] = app_state.ollama_names_warned
    if requested not in known and requested not in warned and len(warned) < _WARNED_NAMES_MAX:
        warned.add(requested)  # bounded: a client cycling names cannot grow it for ever
        logger.warning("Ollama model name %r is answered by the served model %r", requested, served)
    return requested


async def generate(request: Request) -> Response:
    opened = await open_request(
        request, GenerateRequest, any_content_type=True, check_model=False, sessions=False
    )
    state, req = opened.state, opened.body
    name = _model(request, req.model)
    generation = req.to_generation(opened.validator.variant)
    if req.loads_only:
        return JSONResponse(OllamaFormatter(name, 0).final("", reason=req.load_reason))
    valid = await opened.validate(generation)
    return await _run(request, state, valid, name, req.streaming, req.warmup, chat=False)


async def chat(request: Request) -> Response:
    opened = await open_request(
        request, ChatRequest, any_content_type=True, check_model=False, sessions=False
    )
    state, req = opened.state, opened.body
    name = _model(request, req.model)
    generation = req.to_generation()
    if not req.messages:
        return JSONResponse(OllamaFormatter(name, 0, chat=True).final("", reason="load"))
    valid = await opened.validate(generation)
    return await _run(request, state, valid, name, req.streaming, req.warmup, chat=True)


async def _run(
    request: Request,
    state: ServerState,
    valid: ValidRequest,
    name: str,
    stream: bool,
    warmup: bool,
    *,
    chat: bool,
) -> Response:
    (prompt,) = valid.prompts
    formatter = OllamaFormatter(name, len(prompt.token_ids), chat=chat, warmup=warmup)
    request_id = f"ollama-{uuid.uuid4().hex}"
    outputs = engine_outputs(state.engine, request_id, [prompt.token_ids], valid.options)
    return await respond(request, formatter, outputs, stream=stream, dialect=OLLAMA)


async def tags(request: Request) -> Response:
    state = server_state(request)
    variant = state.tokenizer.variant
    return JSONResponse(formatting.tags(state.model_name, variant, state.created))


async def show(request: Request) -> Response:
    state = server_state(request)
    req = await parse_body(request, ShowRequest, any_content_type=True)
    name = _model(request, req.requested)
    validator = state.ready()  # the window is known once the engine has started
    body = formatting.show(
        name, state.settings.model, validator.variant, validator.limits.max_model_len,
        state.created,
    )  # fmt: skip
    return JSONResponse(body)


async def version(request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_VERSION})


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


routes = [
    Route("/", root, methods=["GET"]),  # GET routes answer HEAD too
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
]
