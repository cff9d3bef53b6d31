"""Chat prompts rendered in plain Python, byte-identical to the checkpoints' Jinja templates.

The official templates live in tokenizer_config.json; rendering them here instead keeps the
prompt format fixed, testable against the originals, and free of Jinja at request time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deepseek_serve.prompts.variant import Family, Variant

# Verbatim from the Coder v1 instruct template; inserted only when no message is a system one.
V1_DEFAULT_SYSTEM_PROMPT = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
    "Deepseek Company, and you only answer questions related to computer science. For "
    "politically sensitive questions, security and privacy issues, and other non-computer "
    "science questions, you will refuse to answer\n"
)
# The v1 template prints '### Response:' followed by a literal newline outside any block tag,
# which trim_blocks does not remove, so the generation prompt ends with "\n".
V1_GENERATION_PROMPT = "### Response:\n"
V2_GENERATION_PROMPT = "Assistant:"

_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat turn; ``role`` is "system", "user" or "assistant"."""

    role: str
    content: str


def _v1_turn(message: ChatMessage, eot_text: str) -> str:
    if message.role == "system":
        # No separator: the template emits system content verbatim, glued to the next turn.
        return message.content
    if message.role == "user":
        return f"### Instruction:\n{message.content}\n"
    return f"### Response:\n{message.content}\n{eot_text}\n"


def _render_v1(
    messages: Sequence[ChatMessage], variant: Variant, add_generation_prompt: bool
) -> str:
    eot_text = variant.special.eot_text
    if eot_text is None:
        raise ValueError("DeepSeek-Coder v1 chat needs the <|EOT|> token")
    parts = [variant.special.bos_text]
    if not any(m.role == "system" for m in messages):
        parts.append(V1_DEFAULT_SYSTEM_PROMPT)
    parts.extend(_v1_turn(m, eot_text) for m in messages)
    if add_generation_prompt:
        parts.append(V1_GENERATION_PROMPT)
    return "".join(parts)


def _v2_turn(message: ChatMessage, eos_text: str) -> str:
    if message.role == "system":
        return f"{message.content}\n\n"
    if message.role == "user":
        return f"User: {message.content}\n\n"
    return f"Assistant: {message.content}{eos_text}"


def _render_v2(
    messages: Sequence[ChatMessage], variant: Variant, add_generation_prompt: bool
) -> str:
    parts = [variant.special.bos_text]
    parts.extend(_v2_turn(m, variant.special.eos_text) for m in messages)
    if add_generation_prompt:
        parts.append(V2_GENERATION_PROMPT)
    return "".join(parts)


def render_chat(
    messages: Sequence[ChatMessage],
    variant: Variant,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    """Render ``messages`` exactly as the model's official chat template does.

    The result starts with the BOS text, like the template's; PromptTokenizer.encode keeps a
    single BOS. Raises ValueError for base models, an empty conversation (as transformers'
    apply_chat_template does) or an unknown role.

    ``continue_final_message`` leaves the last message open (as transformers and vLLM do: the
    text ends right after its content), so the model continues it.
    """
    if not variant.supports_chat:
        raise ValueError(f"{variant.family.value} {variant.kind.value} has no chat template")
    if not messages:
        raise ValueError("a chat needs at least one message")
    for message in messages:
        if message.role not in _ROLES:
            raise ValueError(f"unsupported chat role {message.role!r}")
    if continue_final_message:
        add_generation_prompt = False
    if variant.family is Family.CODER_V1:
        text = _render_v1(messages, variant, add_generation_prompt)
    else:
        text = _render_v2(messages, variant, add_generation_prompt)
    if continue_final_message:
        last = messages[-1].content
        text = text[: text.rindex(last) + len(last)]
    return text
