"""The DeepSeek-Coder deployment guide's REST API: ``/api/v1/completion``, ``/insertion``,
``/chat`` (shapes and the meaning of ``language`` in ``deploy_api.py``)."""

from __future__ import annotations

import dataclasses
import time
import uuid

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.deploy_api import (
    DEFAULT_MAX_TOKENS,
    ApiChat,
    ApiCompletion,
    ApiInsertion,
    to_openai,
)
from deepseek_serve.engine import SamplingOptions
from deepseek_serve.formatting import ChatFormatter, CompletionFormatter
from deepseek_serve.protocol import _to_invalid_request, parse_body
from deepseek_serve.scheduling import request_priority
from deepseek_serve.sessions import guarded, session_key
from deepseek_serve.state import server_state
from deepseek_serve.streaming import engine_outputs, respond


async def completion(request: Request) -> Response:
    return await _text(request, await parse_body(request, ApiCompletion), "cmpl", "text_completion")


async def insertion(request: Request) -> Response:
    return await _text(request, await parse_body(request, ApiInsertion), "ins", "text_insertion")


async def _text(
    request: Request, api: ApiCompletion | ApiInsertion, id_prefix: str, object_name: str
) -> Response:
    state = server_state(request)
    state.check_model(api.model)
    builder = state.ready_prompts()
    key = session_key(request, api.session_id)
    req = to_openai(api)
    state.check_caps(req)
    (prompt,) = await builder.completion_prompts(req)
    max_tokens = builder.max_tokens(len(prompt.token_ids), req.max_tokens, DEFAULT_MAX_TOKENS)
    options = builder.sampling_options(
        req, max_tokens=max_tokens, variant_stops=builder.variant.completion_stop_ids, logprobs=None
    )
    priority = request_priority(state.settings, 0, interactive=True)
    options = dataclasses.replace(options, priority=priority)
    request_id = f"{id_prefix}-{uuid.uuid4().hex}"
    shape = (CompletionFormatter, object_name, object_name)
    return await _answer(request, key, request_id, prompt.token_ids, options, shape, req.stream)


async def chat(request: Request) -> Response:
    state = server_state(request)
    api = await parse_body(request, ApiChat)
    state.check_model(api.model)
    builder = state.ready_prompts()
    key = session_key(request, api.session_id)
    try:
        req = api.to_openai()
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None
    state.check_caps(req)
    prompt = await builder.chat_prompt(req)
    max_tokens = min(
        builder.max_tokens(len(prompt.token_ids), req.effective_max_tokens, None),
        req.effective_max_tokens or DEFAULT_MAX_TOKENS,
    )
    options = builder.sampling_options(
        req, max_tokens=max_tokens, variant_stops=builder.variant.chat_stop_ids, logprobs=None
    )
    request_id = f"chat-{uuid.uuid4().hex}"
    shape = (ChatFormatter, "chat.completion", "chat.completion.chunk")
    return await _answer(request, key, request_id, prompt.token_ids, options, shape, req.stream)


async def _answer(
    request: Request,
    session: str | None,
    request_id: str,
    prompt_ids: list[int],
    options: SamplingOptions,
    shape: tuple[type[CompletionFormatter] | type[ChatFormatter], str, str],
    stream: bool,
) -> Response:
    """Run one prompt under its editor session and answer in the guide's shape (its object
    names, no ``logprobs`` in the choices)."""
    state = server_state(request)
    formatter_cls, object_name, chunk_name = shape
    formatter = formatter_cls(
        request_id=request_id,
        created=int(time.time()),
        model=state.model_name,
        prompt_lens=[len(prompt_ids)],
        n=1,
        want_logprobs=False,
        object_name=object_name,
        chunk_object_name=chunk_name,
        logprobs_field=False,
    )
    outputs = guarded(
        state.sessions, session, engine_outputs(state.engine, request_id, [prompt_ids], options)
    )
    return await respond(request, formatter, outputs, stream=stream)


routes = [
    Route("/api/v1/completion", completion, methods=["POST"]),
    Route("/api/v1/insertion", insertion, methods=["POST"]),
    Route("/api/v1/chat", chat, methods=["POST"]),
]
