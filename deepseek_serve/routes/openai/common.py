"""What the OpenAI-dialect handlers share: the response fingerprint and the warm-up answer."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace

from deepseek_serve import __version__
from deepseek_serve.engine import EngineOutput
from deepseek_serve.http.state import ServerState


def system_fingerprint(state: ServerState) -> str:
    """Names the serving configuration (this server's version, the model, its window), as vLLM's
    ``vllm-<version>-<hash8>`` does: it changes when answers may change for the same request."""
    window = state.validator.limits.max_model_len if state.validator else 0
    key = f"{__version__}|{state.settings.model}|{state.model_name}|{window}"
    return f"deepseek_serve-{__version__}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


async def silenced(
    outputs: AsyncIterator[tuple[int, EngineOutput]],
) -> AsyncIterator[tuple[int, EngineOutput]]:
    """A warm-up's outputs (llama.cpp's ``n_predict: 0``): the prompt was processed, so the
    prefix cache holds it, and nothing generated is answered."""
    async for index, out in outputs:
        yield (
            index,
            replace(
                out,
                sequences=[replace(s, text="", token_ids=[], logprobs=None) for s in out.sequences],
            ),
        )
