"""``POST /completion``: llama.cpp's native completion (Continue's, Tabby's and twinny's
llama.cpp providers). The prompt is used as sent: clients render DeepSeek's FIM template
themselves, and token ids go through the same vocabulary checks as everywhere."""

from __future__ import annotations

import uuid
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deepseek_serve.http.sessions import under_session
from deepseek_serve.http.state import Opened, open_request
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.prompts.validation import ValidRequest
from deepseek_serve.routes.llama_cpp.formatting import LlamaFormatter, line_limits
from deepseek_serve.routes.llama_cpp.protocol import LLAMA_CPP, CompletionRequest, LlamaFields

L = TypeVar("L", bound=LlamaFields)


async def answer(request: Request, opened: Opened[L], valid: ValidRequest, kind: str) -> Response:
    """Run a validated llama.cpp request and answer it as llama.cpp does."""
    state, req, tokenizer = opened.state, opened.body, opened.validator.tokenizer
    prompts = valid.prompts
    warmup = req.predict == 0
    formatter = LlamaFormatter(
        model=state.model_name,
        prompt_tokens=[len(p.token_ids) for p in prompts],
        settings=req.generation_settings(opened.validator.limits.max_model_len),
        n=req.completions,
        tokens_dropped=valid.tokens_dropped,
        response_fields=req.response_fields,
        warmup=warmup,
        return_tokens=req.return_tokens,
        n_probs=req.n_probs,
        prompt_text=lambda i: tokenizer.decode(prompts[i].token_ids),
    )
    if warmup and not req.cache_prompt:
        return JSONResponse(formatter.nothing())
    request_id = f"{kind}-{uuid.uuid4().hex}"
    outputs = engine_outputs(
        state.engine, request_id, [p.token_ids for p in prompts], valid.options
    )
    outputs = under_session(state.sessions, opened.session, outputs)
    sequences = len(prompts) * req.completions
    limited = line_limits(outputs, req.n_indent, req.t_max_predict_ms, sequences)
    return await respond(request, formatter, limited, stream=req.stream, dialect=LLAMA_CPP)


async def completion(request: Request) -> Response:
    # llama.cpp serves one model and ignores the name clients send (Continue sends its own).
    opened = await open_request(request, CompletionRequest, check_model=False)
    valid = await opened.validate(opened.body.to_generation())
    return await answer(request, opened, valid, "cmpl")


routes = [Route("/completion", completion, methods=["POST"])]
