"""Request bodies of the OpenAI-compatible API, validated strictly.

Wrong types, out-of-range values and unknown fields are rejected (400 naming the parameter)
rather than coerced or ignored: a client that sends ``"temperature": "hot"`` or ``"tools"`` should
learn at once that it did not get what it asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepseek_serve.errors import InvalidRequestError
from deepseek_serve.http.body import Body
from deepseek_serve.prompts.validation import (
    ChatPrompt,
    GenerationRequest,
    RepoPrompt,
    Sampling,
    TextPrompts,
    token_id_keys,
)
from deepseek_serve.templates import ChatMessage
from deepseek_serve.templates.repo import RepoFile

MAX_LOGPROBS = 20  # vLLM's own ceiling; the operator's cap is settings.max_logprobs

NonNegInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Body(Body):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(_Body):
    """Options shared by completions and chat. Extensions beyond OpenAI's set are marked."""

    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)  # extension; 0 or -1 disables
    min_p: float | None = Field(None, ge=0.0, le=1.0)  # extension
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[NonNegInt] | None = Field(None, max_length=64)  # extension
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)  # extension
    min_tokens: int = Field(0, ge=0)  # extension
    ignore_eos: bool = False  # extension (vLLM's): the variant's stop tokens do not stop
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)  # extension (priority scheduling)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        # How many: the operator's cap (settings.max_stop_sequences), applied in validation.
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            token_id_keys(value)
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def sampling(self, *, max_tokens: int | None, logprobs: int | None) -> Sampling:
        return Sampling(
            max_tokens=max_tokens,
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            stop=self.stop_list(),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=token_id_keys(self.logit_bias) if self.logit_bias else None,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            priority=self.priority,
            user=self.user,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


PromptInput = str | list[str] | list[NonNegInt] | list[list[NonNegInt]]


def _one_line(value: str | None) -> str | None:
    if value is not None and ("\n" in value or "\r" in value):
        raise ValueError("a filename must be a single line")
    return value


class ContextFile(_Strict):
    """Another file of the repository, for repository-level completion (extension)."""

    filename: str = Field(min_length=1, max_length=4096)
    text: str

    _filename = field_validator("filename")(_one_line)


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=128)
    # extensions: repository context (packed into the window) and editor sessions
    input_extra: list[ContextFile] | None = Field(None, max_length=1024)
    filename: str | None = Field(None, min_length=1, max_length=4096)

    _filename = field_validator("filename")(_one_line)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: PromptInput) -> PromptInput:
        if isinstance(value, list) and (not value or any(v == [] for v in value)):
            raise ValueError("prompt must not be an empty list")
        return value

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequestError("best_of other than n is not supported", param="best_of")
        if self.suffix is not None and self.echo:
            raise InvalidRequestError("echo cannot be combined with suffix", param="echo")
        if (self.input_extra is not None or self.filename is not None) and (
            not isinstance(self.prompt, str) or self.echo
        ):
            raise InvalidRequestError(
                "input_extra and filename need a single text prompt and no echo",
                param="input_extra" if self.input_extra is not None else "filename",
            )
        return self

    @property
    def repository_context(self) -> bool:
        return self.input_extra is not None or self.filename is not None

    def to_generation(self, default_max_tokens: int) -> GenerationRequest:
        sampling = self.sampling(max_tokens=self.max_tokens, logprobs=self.logprobs)
        if self.echo and self.logprobs is not None:
            sampling = dataclasses.replace(sampling, prompt_logprobs=self.logprobs)
        prompt: TextPrompts | RepoPrompt
        if self.repository_context:
            prompt = RepoPrompt(
                files=[RepoFile(f.filename, f.text) for f in self.input_extra or ()],
                prefix=cast(str, self.prompt),  # a single text: checked above
                suffix=self.suffix,
                filename=self.filename,
                reserve=self.max_tokens or default_max_tokens,
            )
        else:
            prompt = TextPrompts(_prompt_items(self.prompt), self.suffix)
        return GenerationRequest(
            prompt,
            sampling,
            default_max_tokens=default_max_tokens,
            interactive=isinstance(prompt, RepoPrompt) or len(prompt.items) == 1,
        )


def _prompt_items(raw: PromptInput) -> list[str | list[int]]:
    """The four OpenAI prompt forms as a list of single prompts."""
    if isinstance(raw, str):
        return [raw]
    if all(isinstance(x, int) for x in raw):
        return [cast(list[int], raw)]
    return cast(list[str | list[int]], list(raw))


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    # Lenient about extra keys (clients send "name"), strict about what we use.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[Any] | None = None

    def to_message(self, i: int) -> ChatMessage:
        """This message for the DeepSeek template; ``i`` is its index, for errors."""
        role = _ROLES.get(self.role)
        if role is None:
            raise InvalidRequestError(
                f"Unsupported role {self.role!r}; expected one of system, developer, user, "
                "assistant.",
                param=f"messages[{i}].role",
            )
        if self.tool_calls:
            raise InvalidRequestError(
                "Tool calls are not supported by DeepSeek-Coder.",
                param=f"messages[{i}].tool_calls",
            )
        if self.content is None:
            raise InvalidRequestError("Message content is missing.", param=f"messages[{i}].content")
        if isinstance(self.content, str):
            return ChatMessage(role, self.content)
        texts = []
        for j, part in enumerate(self.content):
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


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    add_generation_prompt: bool = True  # extension

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        return self

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_generation(self) -> GenerationRequest:
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        messages = [m.to_message(i) for i, m in enumerate(self.messages)]
        return GenerationRequest(
            ChatPrompt(messages, self.add_generation_prompt),
            self.sampling(max_tokens=self.effective_max_tokens, logprobs=logprobs),
            names={"logprobs": "top_logprobs"},
        )
