"""``POST /v1/completions``: plain completion, and fill-in-the-middle when ``suffix`` is given.

The same handler answers DeepSeek's platform FIM endpoint, ``POST /beta/completions`` (and
``/v1/beta/completions``, for clients whose base URL ends in ``/v1``): Continue's ``deepseek``
provider posts ``prompt`` + ``suffix`` there. Its usage adds DeepSeek's
``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``, and ``max_tokens`` is fitted to the
window: DeepSeek's platform caps FIM output at 4K tokens inside a 128K window, so its clients ask
for up to 4096 (Continue always does) and never meet a window too small for it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.http.sessions import under_session
from deepseek_serve.http.state import open_request
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.routes.openai.common import silenced, system_fingerprint
from deepseek_serve.routes.openai.formatting import CompletionFormatter, ContextReport
from deepseek_serve.routes.openai.protocol import CompletionRequest


async def create_completion(request: Request, *, deepseek: bool = False) -> Response:
    opened = await open_request(request, CompletionRequest)
    state, req, validator = opened.state, opened.body, opened.validator
    generation = req.to_generation(state.settings.default_completion_max_tokens)
    if deepseek:
        generation = dataclasses.replace(generation, fit_max_tokens=True)
    valid = await opened.validate(generation)
    prompts = valid.prompts
    echo_logprobs = req.echo and req.logprobs is not None
    request_id = f"cmpl-{uuid.uuid4().hex}"
    tokens_as_ids = req.return_tokens_as_token_ids
    formatter = CompletionFormatter(
        request_id=request_id,
        created=int(time.time()),
        model=state.model_name,
        prompt_lens=[len(p.token_ids) for p in prompts],
        n=req.n,
        want_logprobs=req.logprobs is not None,
        include_usage=req.include_usage,
        continuous_usage=req.continuous_usage,
        system_fingerprint=system_fingerprint(state),
        cache_usage=deepseek,
        prompt_token_ids=[p.token_ids for p in prompts] if req.return_token_ids else None,
        return_token_ids=req.return_token_ids,
        want_prompt_logprobs=req.prompt_logprobs is not None,
        tokens_as_ids=tokens_as_ids,
        echo_texts=[p.text for p in prompts] if req.echo else None,
        prompt_token_texts=[
            [f"token_id:{i}" for i in p.token_ids]
            if tokens_as_ids
            else validator.tokenizer.token_texts(p.token_ids)
            for p in prompts
        ]
        if echo_logprobs
        else None,
    )
    outputs = engine_outputs(
        state.engine, request_id, [p.token_ids for p in prompts], valid.options
    )
    if req.warmup(req.max_tokens):
        outputs = silenced(outputs)
    outputs = under_session(state.sessions, opened.session, outputs)
    if valid.tokens_dropped is None:
        return await respond(request, formatter, outputs, stream=req.stream)
    report = ContextReport(formatter, valid.tokens_dropped)
    response = await respond(request, report, outputs, stream=req.stream)
    response.headers["X-Context-Tokens-Dropped"] = str(valid.tokens_dropped)
    return response


async def create_beta_completion(request: Request) -> Response:
    return await create_completion(request, deepseek=True)


routes = [
    Route("/v1/completions", create_completion, methods=["POST"]),
    Route("/beta/completions", create_beta_completion, methods=["POST"]),
    Route("/v1/beta/completions", create_beta_completion, methods=["POST"]),
]
