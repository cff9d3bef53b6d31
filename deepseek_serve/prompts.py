"""Requests to engine inputs: DeepSeek prompt rendering, tokenization and every check that must
happen before the engine sees a token (vocabulary, context window, stop tokens per variant)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from deepseek_serve.engine import ModelLimits, SamplingOptions
from deepseek_serve.errors import ContextWindowExceededError, InvalidRequestError
from deepseek_serve.protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    PromptInput,
)
from deepseek_serve.templates import ChatMessage, render_chat, render_fim
from deepseek_serve.tokenizer import PromptTokenizer
from deepseek_serve.variant import Variant

# Texts at least this long are tokenized in a worker thread. DeepSeek's tokenizer takes about
# 0.2 ms per KiB here, and while it runs in the event loop no other stream moves; the Rust
# tokenizer releases the GIL, so in a thread the loop goes on. Shorter texts cost less than the
# hop to the thread and back.
OFF_LOOP_CHARS = 4096

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    token_ids: list[int]
    text: str  # what ``echo`` returns


@dataclass(frozen=True, slots=True)
class PromptBuilder:
    tokenizer: PromptTokenizer
    limits: ModelLimits
    default_completion_max_tokens: int
    max_tokens_limit: int | None = None  # the operator's cap (settings.max_tokens_limit)

    @property
    def vocab_limit(self) -> int:
        # vLLM checks ids only against the tokenizer; ids past the model's embedding crash its
        # engine core, so the smaller of the two bounds what we accept.
        return min(len(self.tokenizer), self.limits.model_vocab_size)

    async def encode(self, text: str) -> list[int]:
        if len(text) < OFF_LOOP_CHARS:
            return self.tokenizer.encode(text)
        return await asyncio.to_thread(self.tokenizer.encode, text)

    async def completion_prompts(self, req: CompletionRequest) -> list[TokenPrompt]:
        items = _prompt_items(req.prompt)
        prompts = []
        for i, item in enumerate(items):
            param = "prompt" if len(items) == 1 else f"prompt[{i}]"
            if isinstance(item, str):
                text = item if req.suffix is None else render_fim(item, req.suffix, self.variant)
                prompts.append(TokenPrompt(await self.encode(text), item))
            else:
                if req.suffix is not None:
                    raise InvalidRequestError(
                        "suffix needs a text prompt, not token ids", param="suffix"
                    )
                self.check_ids(item, param)
                prompts.append(TokenPrompt(item, self.tokenizer.decode(item)))
        return prompts

    async def chat_prompt(self, req: ChatCompletionRequest) -> TokenPrompt:
        if not self.variant.supports_chat:
            raise InvalidRequestError(
                "This is a base checkpoint with no chat template; "
                "use /v1/completions (plain or with suffix for fill-in-the-middle).",
                param="messages",
                code="chat_not_supported",
            )
        messages = [_message(i, m) for i, m in enumerate(req.messages)]
        text = render_chat(messages, self.variant, add_generation_prompt=req.add_generation_prompt)
        return TokenPrompt(await self.encode(text), text)

    @property
    def variant(self) -> Variant:
        return self.tokenizer.variant

    def check_ids(self, ids: list[int], param: str) -> None:
        limit = self.vocab_limit
        for j, token_id in enumerate(ids):
            if not 0 <= token_id < limit:
                raise InvalidRequestError(
                    f"Token id {token_id} is outside the vocabulary (0..{limit - 1}).",
                    param=f"{param}[{j}]",
                    code="invalid_token_id",
                )

    def max_tokens(self, prompt_len: int, requested: int | None, default: int | None) -> int:
        """Tokens to generate; a prompt that leaves no room is refused, never truncated."""
        window = self.limits.max_model_len
        room = window - prompt_len
        if room <= 0:
            raise ContextWindowExceededError(
                f"The prompt is {prompt_len} tokens; this model's context window is {window}.",
                param="messages" if default is None else "prompt",
            )
        cap = self.max_tokens_limit
        if requested is None:
            chosen = room if default is None else min(default, room)
            return chosen if cap is None else min(chosen, cap)
        if cap is not None and requested > cap:
            raise InvalidRequestError(
                f"max_tokens is {requested}; this server allows at most {cap}.",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        if requested > room:
            raise ContextWindowExceededError(
                f"This model's context window is {window} tokens; the prompt is {prompt_len} "
                f"and max_tokens is {requested} (at most {room} fit).",
                param="max_tokens",
            )
        return requested

    def sampling_options(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        *,
        max_tokens: int,
        variant_stops: tuple[int, ...],
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> SamplingOptions:
        if req.min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({req.min_tokens}) exceeds max_tokens ({max_tokens}).",
                param="min_tokens",
            )
        stop_ids = tuple(req.stop_token_ids or ())
        self.check_ids(list(stop_ids), "stop_token_ids")
        bias = None
        if req.logit_bias:
            bias = {int(k): v for k, v in req.logit_bias.items()}
            self.check_ids(list(bias), "logit_bias")
        return SamplingOptions(
            max_tokens=max_tokens,
            n=req.n,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k in (None, -1) else req.top_k,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            stop=req.stop_list(),
            stop_token_ids=tuple(
                dict.fromkeys((() if req.ignore_eos else variant_stops) + stop_ids)
            ),
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias=bias,
            min_tokens=req.min_tokens,
            priority=req.priority,
            session=req.user,
        )


def _prompt_items(raw: PromptInput) -> list[str | list[int]]:
    """The four OpenAI prompt forms as a list of single prompts."""
    if isinstance(raw, str):
        return [raw]
    if all(isinstance(x, int) for x in raw):
        return [cast(list[int], raw)]
    return cast(list[str | list[int]], list(raw))


def _message(i: int, m: ChatMessageIn) -> ChatMessage:
    role = _ROLES.get(m.role)
    if role is None:
        raise InvalidRequestError(
            f"Unsupported role {m.role!r}; expected one of system, developer, user, assistant.",
            param=f"messages[{i}].role",
        )
    if m.tool_calls:
        raise InvalidRequestError(
            "Tool calls are not supported by DeepSeek-Coder.", param=f"messages[{i}].tool_calls"
        )
    if m.content is None:
        raise InvalidRequestError("Message content is missing.", param=f"messages[{i}].content")
    if isinstance(m.content, str):
        return ChatMessage(role, m.content)
    texts = []
    for j, part in enumerate(m.content):
        if part.get("type") != "text":
            raise InvalidRequestError(
                f"Unsupported content part of type {part.get('type')!r}; "
                "DeepSeek-Coder accepts text parts only.",
                param=f"messages[{i}].content[{j}].type",
            )
        if not isinstance(part.get("text"), str):
            raise InvalidRequestError(
                "A text content part needs a 'text' string.",
                param=f"messages[{i}].content[{j}].text",
            )
        texts.append(part["text"])
    return ChatMessage(role, "\n".join(texts))
