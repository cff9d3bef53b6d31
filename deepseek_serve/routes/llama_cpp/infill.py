"""``POST /infill``: llama.cpp-compatible fill-in-the-middle with repository context."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deepseek_serve.http.sessions import under_session
from deepseek_serve.http.state import open_request
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.routes.llama_cpp.protocol import (
    LLAMA_CPP,
    InfillFormatter,
    InfillRequest,
    line_limits,
)


async def infill(request: Request) -> Response:
    opened = await open_request(request, InfillRequest)
    state, req = opened.state, opened.body
    valid = await opened.validate(req.to_generation())
    (prompt,) = valid.prompts
    warmup = req.n_predict == 0
    formatter = InfillFormatter(
        model=state.model_name,
        prompt_tokens=len(prompt.token_ids),
        tokens_dropped=valid.tokens_dropped or 0,
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
    outputs = engine_outputs(state.engine, request_id, [prompt.token_ids], valid.options)
    outputs = under_session(state.sessions, opened.session, outputs)
    limited = line_limits(outputs, req.n_indent, req.t_max_predict_ms)
    return await respond(request, formatter, limited, stream=req.stream, dialect=LLAMA_CPP)


routes = [Route("/infill", infill, methods=["POST"])]
