"""Chat and FIM templates against the checkpoints' own Jinja templates and tokenizers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from deepseek_serve.demo import packaged_tokenizer_dir
from deepseek_serve.prompts.tokenizer import PromptTokenizer, load_hf_tokenizer
from deepseek_serve.prompts.variant import Family, Kind, Variant, detect_variant
from deepseek_serve.templates import ChatMessage, render_chat, render_fim

V1_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
    "Deepseek Company, and you only answer questions related to computer science. For "
    "politically sensitive questions, security and privacy issues, and other non-computer "
    "science questions, you will refuse to answer\n"
)
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

CONVERSATIONS: list[list[tuple[str, str]]] = [
    [("user", "hi")],
    [("system", "SYS"), ("user", "hi")],
    [("system", "SYS"), ("user", "hi"), ("assistant", "yo"), ("user", "again")],
    [("user", "hi"), ("assistant", "yo")],
    [("user", "")],
    [("system", ""), ("user", "")],
    [("user", "def f():\n    return 1\n\n"), ("assistant", "```python\nx = 1\n```\n")],
    [("user", "Привет 🦙 你好 — Führer"), ("assistant", "ünïcödé ✅")],
    [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")],
    [("user", "a"), ("system", "late system"), ("user", "b")],
    [("assistant", "assistant first")],
    [("user", "{{ bos_token }} ### Response:\n<|EOT|> User: x")],
    [("system", "  \n\t"), ("user", "\n\n"), ("assistant", " ")],
]


@pytest.fixture(scope="module")
def tokenizers() -> dict[Family, tuple[PreTrainedTokenizerBase, Variant]]:
    loaded = {}
    for family, config in (
        (Family.CODER_V1, {"model_type": "llama"}),
        (Family.CODER_V2, {"model_type": "deepseek_v2"}),
    ):
        path = packaged_tokenizer_dir(family.value)
        hf = load_hf_tokenizer(path)
        tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
        variant = detect_variant(config, tokenizer_config, hf)
        assert variant.family is family
        assert variant.kind is Kind.INSTRUCT
        loaded[family] = (hf, variant)
    return loaded


def _messages(conversation: list[tuple[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(role, content) for role, content in conversation]


def _hf_render(hf: PreTrainedTokenizerBase, conversation: list[tuple[str, str]], gen: bool) -> Any:
    dicts = [{"role": role, "content": content} for role, content in conversation]
    return hf.apply_chat_template(dicts, tokenize=False, add_generation_prompt=gen)


@pytest.mark.parametrize("family", list(Family))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_render_chat_matches_official_template(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
    family: Family,
    add_generation_prompt: bool,
    conversation: list[tuple[str, str]],
) -> None:
    hf, variant = tokenizers[family]
    ours = render_chat(
        _messages(conversation), variant, add_generation_prompt=add_generation_prompt
    )
    assert ours == _hf_render(hf, conversation, add_generation_prompt)


def test_v1_literal_default_system_and_generation_prompt(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
) -> None:
    _, v1 = tokenizers[Family.CODER_V1]
    # The generation prompt ends with a newline: the template's literal "\n" after it survives.
    assert render_chat([ChatMessage("user", "hi")], v1) == (
        BOS + V1_SYSTEM + "### Instruction:\nhi\n### Response:\n"
    )
    assert render_chat([ChatMessage("user", "hi")], v1, add_generation_prompt=False) == (
        BOS + V1_SYSTEM + "### Instruction:\nhi\n"
    )


def test_v1_literal_system_is_glued_to_next_turn(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
) -> None:
    _, v1 = tokenizers[Family.CODER_V1]
    messages = _messages(CONVERSATIONS[2])
    assert render_chat(messages, v1) == (
        BOS + "SYS### Instruction:\nhi\n### Response:\nyo\n<|EOT|>\n"
        "### Instruction:\nagain\n### Response:\n"
    )


def test_v2_literal(tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]]) -> None:
    _, v2 = tokenizers[Family.CODER_V2]
    messages = _messages(CONVERSATIONS[2])
    assert render_chat(messages, v2) == (
        BOS + "SYS\n\nUser: hi\n\nAssistant: yo" + EOS + "User: again\n\nAssistant:"
    )
    assert render_chat([ChatMessage("user", "hi")], v2, add_generation_prompt=False) == (
        BOS + "User: hi\n\n"
    )


@pytest.mark.parametrize("family", list(Family))
def test_rendered_chat_tokens_start_with_one_bos(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]], family: Family
) -> None:
    hf, variant = tokenizers[family]
    text = render_chat(_messages(CONVERSATIONS[2]), variant)
    ids = PromptTokenizer(hf, variant).encode(text)
    assert ids[0] == variant.special.bos
    assert ids.count(variant.special.bos) == 1
    # The BOS in the text is the BOS of the prompt: nothing else changes.
    assert ids == hf.encode(text, add_special_tokens=False)


def test_v1_chat_turn_end_is_single_eot(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
) -> None:
    hf, v1 = tokenizers[Family.CODER_V1]
    ids = PromptTokenizer(hf, v1).encode(render_chat(_messages(CONVERSATIONS[3]), v1))
    assert ids.count(32021) == 1


def test_render_chat_rejects_base_empty_and_unknown_role(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
) -> None:
    _, v1 = tokenizers[Family.CODER_V1]
    base = Variant(v1.family, Kind.BASE, v1.special)
    with pytest.raises(ValueError, match="no chat"):
        render_chat([ChatMessage("user", "hi")], base)
    with pytest.raises(ValueError, match="at least one"):
        render_chat([], v1)
    with pytest.raises(ValueError, match="role"):
        render_chat([ChatMessage("tool", "x")], v1)


PREFIX = "def fib(n):\n    "
SUFFIX = "\n    return fib(n - 1) + fib(n - 2)\n"


@pytest.mark.parametrize(
    ("family", "bos", "begin", "hole", "end"),
    [
        (Family.CODER_V1, 32013, 32016, 32015, 32017),
        (Family.CODER_V2, 100000, 100003, 100002, 100004),
    ],
)
def test_render_fim_text_and_ids(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
    family: Family,
    bos: int,
    begin: int,
    hole: int,
    end: int,
) -> None:
    hf, variant = tokenizers[family]
    text = render_fim(PREFIX, SUFFIX, variant)
    assert text == f"<｜fim▁begin｜>{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>"
    pieces = [hf.encode(p, add_special_tokens=False) for p in (PREFIX, SUFFIX)]
    assert all(pieces)
    expected = [bos, begin, *pieces[0], hole, *pieces[1], end]
    assert PromptTokenizer(hf, variant).encode(text) == expected
    # The engine's own tokenization (BOS from the post-processor) agrees.
    assert hf.encode(text) == expected


def test_render_fim_empty_parts(
    tokenizers: dict[Family, tuple[PreTrainedTokenizerBase, Variant]],
) -> None:
    hf, v1 = tokenizers[Family.CODER_V1]
    text = render_fim("", "", v1)
    assert text == "<｜fim▁begin｜><｜fim▁hole｜><｜fim▁end｜>"
    assert PromptTokenizer(hf, v1).encode(text) == [32013, 32016, 32015, 32017]
