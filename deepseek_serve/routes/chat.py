"""``POST /v1/chat/completions``, rendered with the checkpoint's own DeepSeek chat template."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.formatting import ChatFormatter
from deepseek_serve.protocol import ChatCompletionRequest, parse_body
from deepseek_serve.state import server_state
from deepseek_serve.streaming import engine_outputs, respond


async def create_chat_completion(request: Request) -> Response:
    state = server_state(request)
    req = await parse_body(request, ChatCompletionRequest)
    state.check_model(req.model)
    state.check_caps(req)
    builder = state.ready_prompts()

    prompt = await builder.chat_prompt(req)
    max_tokens = builder.max_tokens(len(prompt.token_ids), req.effective_max_tokens, None)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    options = builder.sampling_options(
        req, max_tokens=max_tokens, variant_stops=builder.variant.chat_stop_ids, logprobs=logprobs
    )
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
    outputs = engine_outputs(state.engine, request_id, [prompt.token_ids], options)
    return await respond(request, formatter, outputs, stream=req.stream)


routes = [Route("/v1/chat/completions", create_chat_completion, methods=["POST"])]
