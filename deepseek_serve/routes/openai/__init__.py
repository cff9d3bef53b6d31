"""The OpenAI-compatible dialect (``/v1/completions``, ``/v1/chat/completions``): request models
(``protocol``), response bodies and stream chunks (``formatting``), and their handlers. Also the
paths clients of DeepSeek's platform use (``/beta/completions``, ``/chat/completions``) and
vLLM's ``/tokenize`` and ``/detokenize``, which answer in the same error shape."""

from __future__ import annotations

from deepseek_serve.http.streaming import OPENAI
from deepseek_serve.routes.openai import chat, completions, tokenize

dialect = OPENAI
routes = [*completions.routes, *chat.routes, *tokenize.routes]
