"""The DeepSeek-Coder deployment guide's REST API (``/api/v1/completion``, ``/insertion``,
``/chat``): the guide's bodies mapped onto the same validation and engine path, answered in its
shapes (OpenAI-like, ``[DONE]`` ends streams)."""

from __future__ import annotations

from deepseek_serve.http.streaming import OPENAI
from deepseek_serve.routes.guide import endpoints

dialect = OPENAI
routes = [*endpoints.routes]
