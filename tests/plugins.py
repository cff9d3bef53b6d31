"""Request bodies exactly as the llama.cpp editor plugins send them to ``/infill``."""

from __future__ import annotations

from typing import Any


def vim_body(**overrides: Any) -> dict[str, Any]:
    """What llama.vim's llama#fim sends (autoload/llama.vim), chunk times included."""
    body: dict[str, Any] = {
        "input_prefix": "import os\n\ndef main():\n",
        "input_suffix": "\n\nmain()\n",
        "input_extra": [
            {"text": "def helper():\n    return 1\n", "time": [1732, 51234], "filename": "util.py"}
        ],
        "prompt": "    ",
        "n_predict": 16,
        "n_indent": 4,
        "top_k": 40,
        "top_p": 0.99,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "response_fields": [
            "content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
            "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
            "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
            "tokens_cached",
        ],
    }  # fmt: skip
    body.update(overrides)
    return body


def vscode_body(**overrides: Any) -> dict[str, Any]:
    """What llama.vscode's createRequestPayload sends (src/llama-server.ts)."""
    body: dict[str, Any] = {
        "input_prefix": "const x = 1;\nfunction f() {\n",
        "input_suffix": "\n}\n",
        "input_extra": [
            {"text": "export const y = 2;\n", "time": 1732000000, "filename": "/p/y.ts"}
        ],
        "prompt": "  return ",
        "n_predict": 8,
        "top_k": 40,
        "top_p": 0.99,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "n_indent": 2,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 2500,
    }
    body.update(overrides)
    return body
