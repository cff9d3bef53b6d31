"""Request bodies of the OpenAI-compatible API, validated strictly.

Known fields with a wrong type or an out-of-range value are rejected (400 naming the parameter)
rather than coerced: a client that sends ``"temperature": "hot"`` learns at once that it did not
get what it asked for. Unknown fields are ignored and logged, as vLLM does (``http.body``).

Fields of llama.cpp's and Ollama's dialects that editor plugins send to these routes and that mean
something we support are honoured: ``n_predict`` (0: a warm-up that processes the prompt and
answers nothing; -1: no limit), ``repeat_penalty`` and Ollama's ``options`` (``num_predict``,
``temperature``, ``stop`` ...). The OpenAI field wins where both are given.
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
    non_empty_stops,
    token_id_keys,
)
from deepseek_serve.routes.openai.structured import (
    ResponseFormat,
    StructuredOutputs,
    structured_output,
)
from deepseek_serve.templates import ChatMessage
from deepseek_serve.templates.repo import RepoFile

MAX_LOGPROBS = 20  # vLLM's own ceiling; the operator's cap is settings.max_logprobs


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Body(Body):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class OllamaOptions(_Strict):
    """Ollama's ``options`` as twinny's "openai-compatible" provider sends them (``null`` is
    "not given"); unknown options are ignored and logged like unknown fields."""

    num_predict: int | None = Field(None, ge=-2)  # -1: no limit, -2: fill the window
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: list[str] | None = None
    repeat_penalty: float | None = Field(None, gt=0.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not s for s in value):
            raise ValueError("stop sequences must be non-empty")
        return value


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
    stop_token_ids: list[int] | None = Field(None, max_length=64)  # extension; ids checked later
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)  # extension
    min_tokens: int = Field(0, ge=0)  # extension
    ignore_eos: bool = False  # extension (vLLM's): the variant's stop tokens do not stop
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)  # extension (priority scheduling)
    # llama.cpp's and Ollama's names, honoured when the OpenAI field is not given
    n_predict: int | None = Field(None, ge=-1)  # 0: warm-up, -1: no limit
    repeat_penalty: float | None = Field(None, gt=0.0, le=2.0)
    options: OllamaOptions | None = None
    # vLLM's extensions
    return_token_ids: bool = False  # prompt_token_ids and token_ids in the answer
    return_tokens_as_token_ids: bool = False  # logprob tokens as "token_id:N"
    allowed_token_ids: list[int] | None = Field(None, min_length=1)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    _stops = field_validator("stop")(non_empty_stops)

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            token_id_keys(value)
        return value

    @model_validator(mode="after")
    def _prompt_logprobs_not_streamed(self) -> SamplingFields:
        if self.prompt_logprobs is not None and self.stream:
            raise InvalidRequestError(
                "prompt_logprobs is not available with stream", param="prompt_logprobs"
            )
        return self

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    def stop_list(self) -> tuple[str, ...]:
        stop = self.stop
        if stop is None and self.options is not None:
            stop = self.options.stop
        return (stop,) if isinstance(stop, str) else tuple(stop or ())

    def _foreign_length(self) -> int | None:
        """``n_predict`` or ``options.num_predict``, whichever was given (None: neither)."""
        if self.n_predict is not None:
            return self.n_predict
        return self.options.num_predict if self.options is not None else None

    def length(self, max_tokens: int | None) -> tuple[int | None, bool]:
        """Tokens to generate (None: the default) and whether the default is "no limit"."""
        if max_tokens is not None:
            return max_tokens, False
        foreign = self._foreign_length()
        if foreign is None:
            return None, False
        if foreign < 0:
            return None, True
        return max(foreign, 1), False  # 0: a warm-up generates one token, answered as none

    def warmup(self, max_tokens: int | None) -> bool:
        """llama.cpp's ``n_predict: 0`` (llama.vim's warm-up): process the prompt, answer
        nothing."""
        return max_tokens is None and self._foreign_length() == 0

    def _option(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None and self.options is not None:
            value = getattr(self.options, name)
        return value

    def sampling(self, *, max_tokens: int | None, logprobs: int | None) -> Sampling:
        o = self.options
        repetition = self.repetition_penalty or self.repeat_penalty
        if repetition is None and o is not None:
            repetition = o.repeat_penalty
        fields = set(self.model_fields_set)
        presence, frequency = self.presence_penalty, self.frequency_penalty
        if o is not None:
            if "presence_penalty" not in fields and o.presence_penalty is not None:
                presence = o.presence_penalty
            if "frequency_penalty" not in fields and o.frequency_penalty is not None:
                frequency = o.frequency_penalty
        return Sampling(
            max_tokens=max_tokens,
            n=self.n,
            temperature=self._option("temperature"),
            top_p=self._option("top_p"),
            top_k=self._option("top_k"),
            min_p=self._option("min_p"),
            seed=self._option("seed"),
            stop=self.stop_list(),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            presence_penalty=presence,
            frequency_penalty=frequency,
            repetition_penalty=1.0 if repetition is None else repetition,
            logit_bias=token_id_keys(self.logit_bias) if self.logit_bias else None,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            allowed_token_ids=tuple(self.allowed_token_ids) if self.allowed_token_ids else None,
            structured=structured_output(self.response_format, self.structured_outputs),
            logprobs=logprobs,
            prompt_logprobs=self.prompt_logprobs,
            priority=self.priority,
            user=self.user,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


# Ids are checked after the union matched (``_non_empty``), so that a negative one gets a message
# about ids rather than "Input should be a valid string" from the first union member.
PromptInput = str | list[str] | list[int] | list[list[int]]


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
        if isinstance(value, list):
            rows = [value] if value and isinstance(value[0], int) else value
            for i, row in enumerate(rows):
                if not isinstance(row, list):
                    continue
                for j, token_id in enumerate(row):
                    if token_id < 0:
                        at = f"prompt[{j}]" if rows is not value else f"prompt[{i}][{j}]"
                        raise InvalidRequestError(
                            f"Token ids must be >= 0, got {token_id}.",
                            param=at,
                            code="invalid_token_id",
                        )
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
        max_tokens, unbounded = self.length(self.max_tokens)
        sampling = self.sampling(max_tokens=max_tokens, logprobs=self.logprobs)
        if self.echo and self.logprobs is not None:
            wanted = max(self.logprobs, self.prompt_logprobs or 0)
            sampling = dataclasses.replace(sampling, prompt_logprobs=wanted)
        prompt: TextPrompts | RepoPrompt
        if self.repository_context:
            prompt = RepoPrompt(
                files=[RepoFile(f.filename, f.text) for f in self.input_extra or ()],
                prefix=cast(str, self.prompt),  # a single text: checked above
                suffix=self.suffix,
                filename=self.filename,
                reserve=max_tokens or (None if unbounded else default_max_tokens),
            )
        else:
            prompt = TextPrompts(_prompt_items(self.prompt), self.suffix)
        return GenerationRequest(
            prompt,
            sampling,
            default_max_tokens=None if unbounded else default_max_tokens,
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


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True  # extension
    continue_final_message: bool = False  # extension (vLLM's): the last message is continued
    echo: bool = False  # extension (vLLM's): the answer starts with the last message's content
    # Known so that they are refused, not ignored: a client relying on tools must learn at once.
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if self.tools:
            raise InvalidRequestError("Tools are not supported by DeepSeek-Coder.", param="tools")
        if self.continue_final_message and self.add_generation_prompt:
            if "add_generation_prompt" in self.model_fields_set:
                raise InvalidRequestError(
                    "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                    param="continue_final_message",
                )
            # Not given: continuing the final message implies no generation prompt.
            object.__setattr__(self, "add_generation_prompt", False)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        return self

    @property
    def answer_role(self) -> str:
        """The role the answer is written in: the assistant's, or, with no generation prompt,
        that of the message being continued (vLLM's rule)."""
        if self.add_generation_prompt:
            return "assistant"
        return _ROLES.get(self.messages[-1].role, self.messages[-1].role)

    def echo_text(self) -> str | None:
        """What ``echo`` puts before the answer: the last message's content when it has the
        answer's role (vLLM's rule), else nothing."""
        last = self.messages[-1]
        if not self.echo or _ROLES.get(last.role) != self.answer_role:
            return None
        return last.to_message(len(self.messages) - 1).content

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_generation(self) -> GenerationRequest:
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        messages = [m.to_message(i) for i, m in enumerate(self.messages)]
        max_tokens, _ = self.length(self.effective_max_tokens)
        return GenerationRequest(
            ChatPrompt(messages, self.add_generation_prompt, self.continue_final_message),
            self.sampling(max_tokens=max_tokens, logprobs=logprobs),
            names={"logprobs": "top_logprobs"},
        )
