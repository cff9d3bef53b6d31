"""HTTP routes, one package per API dialect; each keeps its request models, response shapes and
handlers together.

Knows: HTTP requests and responses of each dialect. Imports down only: ``http`` (state, SSE,
sessions), ``prompts``, ``engine``, ``errors``. Nothing below imports a route.
"""

from __future__ import annotations

from starlette.routing import Route

from deepseek_serve.http.streaming import Dialect
from deepseek_serve.routes import guide, llama_cpp, ollama, openai, system

_DIALECTS = (openai, llama_cpp, ollama, guide)


def all_routes() -> list[Route]:
    return [*system.routes, *(r for d in _DIALECTS for r in d.routes)]


def dialects() -> dict[str, Dialect]:
    """Each route's path and the dialect it answers in (errors from the gate included)."""
    return {route.path: d.dialect for d in _DIALECTS for route in d.routes}
