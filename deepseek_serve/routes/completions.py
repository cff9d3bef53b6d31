"""``POST /v1/completions``: plain completion, and fill-in-the-middle when ``suffix`` is given."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.context import ContextReport, as_token_prompt, completion_with_context
from deepseek_serve.formatting import CompletionFormatter
from deepseek_serve.protocol import CompletionRequest, parse_body
from deepseek_serve.scheduling import request_priority
from deepseek_serve.sessions import guarded, session_key
from deepseek_serve.state import server_state
from deepseek_serve.streaming import engine_outputs, respond


async def create_completion(request: Request) -> Response:
    state = server_state(request)
    req = await parse_body(request, CompletionRequest)
    state.check_model(req.model)
    state.check_caps(req)
    builder = state.ready_prompts()
    key = session_key(request, req.session_id)

    packed = None
    if req.repository_context:
        packed = await asyncio.to_thread(completion_with_context, builder, req, state.context_cache)
        prompts = [as_token_prompt(packed)]
    else:
        prompts = await builder.completion_prompts(req)
    longest = max(len(p.token_ids) for p in prompts)
    max_tokens = builder.max_tokens(
        longest, req.max_tokens, state.settings.default_completion_max_tokens
    )
    echo_logprobs = req.echo and req.logprobs is not None
    options = builder.sampling_options(
        req,
        max_tokens=max_tokens,
        variant_stops=builder.variant.completion_stop_ids,
        logprobs=req.logprobs,
        prompt_logprobs=req.logprobs if echo_logprobs else None,
    )
    priority = request_priority(state.settings, req.priority, interactive=len(prompts) == 1)
    options = dataclasses.replace(options, priority=priority)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    formatter = CompletionFormatter(
        request_id=request_id,
        created=int(time.time()),
        model=state.model_name,
        prompt_lens=[len(p.token_ids) for p in prompts],
        n=req.n,
        want_logprobs=req.logprobs is not None,
        include_usage=req.include_usage,
        continuous_usage=req.continuous_usage,
        echo_texts=[p.text for p in prompts] if req.echo else None,
        prompt_token_texts=[builder.tokenizer.token_texts(p.token_ids) for p in prompts]
        if echo_logprobs
        else None,
    )
    outputs = engine_outputs(state.engine, request_id, [p.token_ids for p in prompts], options)
    outputs = guarded(state.sessions, key, outputs)
    if packed is None:
        return await respond(request, formatter, outputs, stream=req.stream)
    report = ContextReport(formatter, packed.tokens_dropped)
    response = await respond(request, report, outputs, stream=req.stream)
    response.headers["X-Context-Tokens-Dropped"] = str(packed.tokens_dropped)
    return response


routes = [Route("/v1/completions", create_completion, methods=["POST"])]
