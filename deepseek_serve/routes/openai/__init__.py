"""The OpenAI-compatible dialect (``/v1/completions``, ``/v1/chat/completions``): request models
(``protocol``), response bodies and stream chunks (``formatting``), and their handlers."""

from __future__ import annotations

from deepseek_serve.http.streaming import OPENAI
from deepseek_serve.routes.openai import chat, completions

dialect = OPENAI
routes = [*completions.routes, *chat.routes]
