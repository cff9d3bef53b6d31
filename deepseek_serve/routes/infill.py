"""``POST /infill``: llama.cpp-compatible fill-in-the-middle with repository context."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deepseek_serve.context import pack_repo_prompt
from deepseek_serve.engine import SamplingOptions
from deepseek_serve.errors import APIError, as_api_error
from deepseek_serve.infill import InfillFormatter, InfillRequest, line_limits, llama_error
from deepseek_serve.protocol import parse_body
from deepseek_serve.scheduling import request_priority
from deepseek_serve.sessions import guarded, session_key
from deepseek_serve.state import server_state
from deepseek_serve.streaming import (
    SSEResponse,
    engine_outputs,
    first_then_rest,
    sse_frame,
    until_disconnected,
)
from deepseek_serve.templates.repo import RepoFile

logger = logging.getLogger(__name__)
# Room kept for the answer when n_predict is -1 (llama.cpp: generate until the window is full).
UNBOUNDED_RESERVE = 256


async def infill(request: Request) -> Response:
    try:
        return await _infill(request)
    except APIError as exc:
        return JSONResponse(llama_error(exc), status_code=exc.status_code)


async def _infill(request: Request) -> Response:
    state = server_state(request)
    req = await parse_body(request, InfillRequest)
    state.check_model(req.model)
    state.check_caps(req)
    builder = state.ready_prompts()
    key = session_key(request, req.session_id)

    window = builder.limits.max_model_len
    reserve = req.n_predict if req.n_predict > 0 else min(UNBOUNDED_RESERVE, window // 4)
    packed = await asyncio.to_thread(
        pack_repo_prompt,
        builder.tokenizer,
        files=[RepoFile(c.filename, c.text) for c in req.input_extra],
        prefix=req.input_prefix + req.prompt,
        suffix=req.input_suffix,
        budget=window - max(reserve, 1),
        filename=req.filename,
        budget_param="n_predict",
        cache=state.context_cache,
    )
    prompt_len = len(packed.token_ids)
    max_tokens = req.n_predict if req.n_predict > 0 else window - prompt_len
    warmup = req.n_predict == 0
    bias = req.bias_by_id()
    if bias:
        builder.check_ids(list(bias), "logit_bias")
    options = SamplingOptions(
        max_tokens=1 if warmup else max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=max(req.top_k, 0),
        min_p=req.min_p,
        seed=None if req.seed in (None, -1) else req.seed,
        stop=tuple(req.stop),
        stop_token_ids=builder.variant.completion_stop_ids,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repeat_penalty,
        logit_bias=bias,
        priority=request_priority(state.settings, req.priority, interactive=True),
    )
    formatter = InfillFormatter(
        model=state.model_name,
        prompt_tokens=prompt_len,
        tokens_dropped=packed.tokens_dropped,
        settings={
            "n_predict": req.n_predict,
            "temperature": req.temperature,
            "top_k": req.top_k,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "stop": req.stop,
            "n_indent": req.n_indent,
            "t_max_predict_ms": req.t_max_predict_ms,
        },
        response_fields=req.response_fields,
        warmup=warmup,
    )
    if warmup and not req.cache_prompt:
        return JSONResponse(formatter.final(""))
    request_id = f"infill-{uuid.uuid4().hex}"
    outputs = engine_outputs(state.engine, request_id, [packed.token_ids], options)
    limited = line_limits(guarded(state.sessions, key, outputs), req.n_indent, req.t_max_predict_ms)
    if req.stream:
        frames = formatter.frames(limited)
        started = await until_disconnected(request, lambda: first_then_rest(frames))
        return SSEResponse(_llama_guarded(started))
    return JSONResponse(await until_disconnected(request, lambda: formatter.collect(limited)))


async def _llama_guarded(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """llama.cpp streams end without ``[DONE]``; an error mid-stream is its own frame."""
    try:
        async for frame in frames:
            yield frame
    except Exception as exc:
        error = as_api_error(exc)
        if error.status_code >= 500:
            logger.error("infill stream failed: %s", error.message, exc_info=exc)
        yield sse_frame(llama_error(error))
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


routes = [Route("/infill", infill, methods=["POST"])]
