"""The DeepSeek-Coder deployment guide's REST API: ``/api/v1/completion``, ``/insertion``,
``/chat`` (shapes and the meaning of ``language`` in ``protocol.py``)."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.http.sessions import under_session
from deepseek_serve.http.state import open_request
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.routes.guide.protocol import ApiChat, ApiCompletion, ApiInsertion
from deepseek_serve.routes.openai.formatting import ChatFormatter, CompletionFormatter


async def completion(request: Request) -> Response:
    return await _answer(request, ApiCompletion, CompletionFormatter, "cmpl", "text_completion")


async def insertion(request: Request) -> Response:
    return await _answer(request, ApiInsertion, CompletionFormatter, "ins", "text_insertion")


async def chat(request: Request) -> Response:
    return await _answer(
        request, ApiChat, ChatFormatter, "chat", "chat.completion", "chat.completion.chunk"
    )


async def _answer(
    request: Request,
    body_type: type[ApiCompletion] | type[ApiInsertion] | type[ApiChat],
    formatter_type: type[CompletionFormatter] | type[ChatFormatter],
    id_prefix: str,
    object_name: str,
    chunk_name: str | None = None,
) -> Response:
    """Run one prompt under its editor session and answer in the guide's shape (its object
    names, no ``logprobs`` in the choices)."""
    opened = await open_request(request, body_type)
    state, body = opened.state, opened.body
    valid = await opened.validate(body.to_generation())
    (prompt,) = valid.prompts
    request_id = f"{id_prefix}-{uuid.uuid4().hex}"
    formatter = formatter_type(
        request_id=request_id,
        created=int(time.time()),
        model=state.model_name,
        prompt_lens=[len(prompt.token_ids)],
        n=1,
        want_logprobs=False,
        object_name=object_name,
        chunk_object_name=chunk_name or object_name,
        logprobs_field=False,
    )
    outputs = engine_outputs(state.engine, request_id, [prompt.token_ids], valid.options)
    outputs = under_session(state.sessions, opened.session, outputs)
    return await respond(request, formatter, outputs, stream=body.stream)


routes = [
    Route("/api/v1/completion", completion, methods=["POST"]),
    Route("/api/v1/insertion", insertion, methods=["POST"]),
    Route("/api/v1/chat", chat, methods=["POST"]),
]
