"""Fill-in-the-middle prompts in DeepSeek-Coder's prefix-suffix-middle layout."""

from __future__ import annotations

from deepseek_serve.prompts.variant import Variant


def render_fim(prefix: str, suffix: str, variant: Variant) -> str:
    """``<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>``; the model writes the hole.

    No BOS text: PromptTokenizer.encode adds the BOS id once.
    """
    special = variant.special
    return f"{special.fim_begin_text}{prefix}{special.fim_hole_text}{suffix}{special.fim_end_text}"
