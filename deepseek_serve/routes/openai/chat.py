"""``POST /v1/chat/completions``, rendered with the checkpoint's own DeepSeek chat template.

Also at ``/chat/completions``: clients whose base URL has no ``/v1`` (Continue's ``deepseek``
provider, whose default base is ``https://api.deepseek.com/``) post there.
"""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.http.state import open_request
from deepseek_serve.http.streaming import engine_outputs, respond
from deepseek_serve.routes.openai.common import silenced, system_fingerprint
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
        system_fingerprint=system_fingerprint(state),
        prompt_token_ids=[prompt.token_ids] if req.return_token_ids else None,
        return_token_ids=req.return_token_ids,
        want_prompt_logprobs=req.prompt_logprobs is not None,
        tokens_as_ids=req.return_tokens_as_token_ids,
        role=req.answer_role,
        echo_text=req.echo_text(),
    )
    outputs = engine_outputs(state.engine, request_id, [prompt.token_ids], valid.options)
    if req.warmup(req.effective_max_tokens):
        outputs = silenced(outputs)
    return await respond(request, formatter, outputs, stream=req.stream)


routes = [
    Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
    Route("/chat/completions", create_chat_completion, methods=["POST"]),
]
