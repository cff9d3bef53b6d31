"""Request bodies of the OpenAI-compatible API, validated strictly.

Wrong types, out-of-range values and unknown fields are rejected (400 naming the parameter)
rather than coerced or ignored: a client that sends ``"temperature": "hot"`` or ``"tools"`` should
learn at once that it did not get what it asked for.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import Request

from deepseek_serve.errors import InvalidRequestError, UnsupportedMediaTypeError

MAX_STOP_SEQUENCES = 16
MAX_LOGPROBS = 20

NonNegInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(_Strict):
    """Options shared by completions and chat. Extensions beyond OpenAI's set are marked."""

    model: str | None = None
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
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
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
    session_id: str | None = None

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


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    # Lenient about extra keys (clients send "name"), strict about what we use.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[Any] | None = None


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


T = TypeVar("T", bound=BaseModel)


async def parse_body(request: Request, model: type[T]) -> T:
    """Read, decode and validate a JSON body, or raise a 400 naming the bad parameter."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got {content_type or 'nothing'!r}."
        )
    raw = await request.body()
    try:
        data = json.loads(raw)
        if b"\\ud" in raw.lower():
            # JSON can escape lone UTF-16 surrogates: not text, and they break tokenizers.
            json.dumps(data, ensure_ascii=False).encode()
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(
            f"The body is not valid JSON: {exc}.", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


def _to_invalid_request(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors(include_url=False)[0]
    loc = [p for p in first["loc"] if not _is_union_tag(p)]
    param = _param_path(loc)
    if first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif first["type"] == "missing":
        message = f"Missing required parameter: {param}"
    else:
        message = f"Invalid value for {param or 'body'}: {first['msg']}"
    return InvalidRequestError(message, param=param or None, code="invalid_value")


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the tried union member into the location, e.g. ('prompt', 'list[int]', 0)
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _param_path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
