"""``continue_final_message`` (vLLM's chat and /tokenize extension) against transformers'
``apply_chat_template(continue_final_message=True)``, which vLLM itself uses."""

from __future__ import annotations

import json

import pytest

from deepseek_serve.demo import packaged_tokenizer_dir
from deepseek_serve.prompts.tokenizer import load_hf_tokenizer
from deepseek_serve.prompts.variant import Family, detect_variant
from deepseek_serve.templates import ChatMessage, render_chat

ENDINGS: list[list[tuple[str, str]]] = [
    [("user", "hi"), ("assistant", "def f(")],
    [("system", "SYS"), ("user", "hi"), ("assistant", "yo"), ("user", "x"), ("assistant", "yo")],
    [("user", "write it"), ("assistant", "```python\n")],
    [("user", "hi"), ("assistant", "  spaced  ")],
    [("user", "open question")],
]


@pytest.mark.parametrize("family", list(Family))
@pytest.mark.parametrize("conversation", ENDINGS)
def test_continue_final_message_matches_transformers(
    family: Family, conversation: list[tuple[str, str]]
) -> None:
    path = packaged_tokenizer_dir(family.value)
    hf = load_hf_tokenizer(path)
    config = {"model_type": "llama" if family is Family.CODER_V1 else "deepseek_v2"}
    variant = detect_variant(config, json.loads((path / "tokenizer_config.json").read_text()), hf)
    dicts = [{"role": r, "content": c} for r, c in conversation]
    expected = hf.apply_chat_template(dicts, tokenize=False, continue_final_message=True)
    messages = [ChatMessage(r, c) for r, c in conversation]
    assert render_chat(messages, variant, continue_final_message=True) == expected
