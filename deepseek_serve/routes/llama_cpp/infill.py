"""``POST /infill``: llama.cpp-compatible fill-in-the-middle with repository context."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deepseek_serve.http.state import open_request
from deepseek_serve.routes.llama_cpp.completion import answer
from deepseek_serve.routes.llama_cpp.protocol import InfillRequest


async def infill(request: Request) -> Response:
    # llama.cpp ignores the model name (llama.vim always sends "model": "").
    opened = await open_request(request, InfillRequest, check_model=False)
    valid = await opened.validate(opened.body.to_generation())
    return await answer(request, opened, valid, "infill")


routes = [Route("/infill", infill, methods=["POST"])]
