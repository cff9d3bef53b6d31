"""``POST /tokenize`` and ``POST /detokenize``: vLLM's shapes, and llama.cpp's on the same paths.

vLLM (``entrypoints/serve/tokenize``): ``{"prompt": str, "add_special_tokens": true}`` or
``{"messages": [...], "add_generation_prompt": true, "continue_final_message": false}`` (the
checkpoint's DeepSeek template applied) give ``{"count", "max_model_len", "tokens",
"token_strs"}``; ``{"tokens": [...]}`` gives ``{"prompt": text}``. The ids are exactly those a
generation request with the same prompt sends to the engine (one BOS, however the text starts).

llama.cpp's server (llama.vscode calls it) sends ``{"content": str, "add_special": false,
"with_pieces": false}`` and reads ``{"tokens": [...]}`` (``[{"id", "piece"}]`` with pieces);
its ``/detokenize`` answer is ``{"content": text}``, so that answer carries both keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deepseek_serve.errors import InvalidRequestError
from deepseek_serve.http.body import Body
from deepseek_serve.http.state import open_request
from deepseek_serve.prompts.validation import ChatPrompt
from deepseek_serve.routes.openai.protocol import ChatMessageIn


class TokenizeRequest(Body):
    prompt: str | None = None  # vLLM, completion form
    messages: list[ChatMessageIn] | None = Field(None, min_length=1)  # vLLM, chat form
    content: str | None = None  # llama.cpp
    add_special_tokens: bool | None = None  # vLLM: default true for prompt, false for messages
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False
    return_token_strs: bool | None = False
    add_special: bool = False  # llama.cpp's name for add_special_tokens (default false there)
    with_pieces: bool = False  # llama.cpp: [{"id", "piece"}] instead of ids
    parse_special: bool = True  # llama.cpp: special-token texts are always parsed here

    @model_validator(mode="after")
    def _one_form(self) -> TokenizeRequest:
        given = [k for k in ("prompt", "messages", "content") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidRequestError(
                "Give exactly one of prompt (text), messages (chat) or content (llama.cpp).",
                param=given[1] if len(given) > 1 else "prompt",
            )
        if self.continue_final_message and self.add_generation_prompt:
            raise InvalidRequestError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                param="continue_final_message",
            )
        return self


class DetokenizeRequest(Body):
    tokens: list[int]


async def tokenize(request: Request) -> Response:
    opened = await open_request(request, TokenizeRequest, sessions=False)
    req, validator = opened.body, opened.validator
    tokenizer = validator.tokenizer
    if req.messages is not None:
        messages = [m.to_message(i) for i, m in enumerate(req.messages)]
        add_generation = (
            not req.continue_final_message
            if req.add_generation_prompt is None
            else req.add_generation_prompt
        )
        prompt = ChatPrompt(messages, add_generation, req.continue_final_message)
        ids = (await validator.chat_tokens(prompt)).token_ids
    else:
        text = req.prompt if req.prompt is not None else req.content
        assert text is not None  # one form is given: checked by the model
        ids = await validator.encode(text)
        special = req.add_special if req.content is not None else req.add_special_tokens
        if special is False or (special is None and req.content is not None):
            ids = ids[1:]  # the BOS encode always puts first
    if req.content is not None:
        if req.with_pieces:
            pieces = tokenizer.token_texts(ids)
            return JSONResponse(
                {"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces, strict=True)]}
            )
        return JSONResponse({"tokens": ids})
    body: dict[str, Any] = {
        "count": len(ids),
        "max_model_len": validator.limits.max_model_len,
        "tokens": ids,
        "token_strs": tokenizer.hf.convert_ids_to_tokens(ids) if req.return_token_strs else None,
    }
    return JSONResponse(body)


async def detokenize(request: Request) -> Response:
    opened = await open_request(request, DetokenizeRequest, sessions=False)
    validator = opened.validator
    validator.check_ids(opened.body.tokens, "tokens")
    text = validator.tokenizer.decode(opened.body.tokens)
    return JSONResponse({"prompt": text, "content": text})


routes = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
]
