"""``POST /v1/chat/completions``, rendered with the checkpoint's own DeepSeek chat template."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.http.state import open_request
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.routes.openai.formatting import ChatFormatter
from deepseek_serve.routes.openai.protocol import ChatCompletionRequest


async def create_chat_completion(request: Request) -> Response:
    opened = await open_request(request, ChatCompletionRequest, sessions=False)
    state, req = opened.state, opened.body
    valid = await opened.validate(req.to_generation())
    (prompt,) = valid.prompts
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    formatter = ChatFormatter(
        request_id=request_id,
        created=int(time.time()),
        model=state.model_name,
        prompt_lens=[len(prompt.token_ids)],
        n=req.n,
        want_logprobs=req.logprobs,
        include_usage=req.include_usage,
        continuous_usage=req.continuous_usage,
    )
    outputs = engine_outputs(state.engine, request_id, [prompt.token_ids], valid.options)
    return await respond(request, formatter, outputs, stream=req.stream)


routes = [Route("/v1/chat/completions", create_chat_completion, methods=["POST"])]
