"""Ollama's API dialect (``/api/generate``, ``/api/chat``, ``/api/tags``, ``/api/show``,
``/api/version``, ``/``): request bodies, NDJSON answers and ``{"error": "..."}`` errors, for
the editor plugins that default to Ollama (twinny, Continue's ``ollama`` provider, Tabby,
llm-ls)."""

from __future__ import annotations

from deepseek_serve.routes.ollama import handlers
from deepseek_serve.routes.ollama.protocol import OLLAMA

dialect = OLLAMA
routes = [*handlers.routes]
