"""Ollama's request bodies (``/api/generate``, ``/api/chat``, ``/api/show``) and error shape.

As Ollama's server, unknown fields and unknown ``options`` are ignored, ``null`` stands for
"not given" everywhere (ollama-rs serializes every field), and the body is JSON whatever the
Content-Type says. Fields we cannot honour are refused with a 400 naming them: ``format``
(JSON mode), ``images``, ``tools``, ``context`` and custom ``template``s.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepseek_serve.errors import APIError, InvalidRequestError
from deepseek_serve.http.body import Body
from deepseek_serve.http.streaming import Dialect, ndjson_line
from deepseek_serve.prompts.validation import (
    ChatPrompt,
    GenerationRequest,
    Sampling,
    TextPrompts,
)
from deepseek_serve.prompts.variant import Variant
from deepseek_serve.templates import ChatMessage

# Ollama's DefaultOptions (api/types.go); num_predict -1: until a stop or the window is full.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9
# Templates that mean "the prompt as is" (Tabby's ollama provider sends the first).
_RAW_TEMPLATES = frozenset({"{{ .Prompt }}", "{{.Prompt}}"})


def ollama_error(exc: APIError) -> dict[str, Any]:
    """Ollama's error body: ``{"error": "<message>"}`` (500s say nothing internal)."""
    return {"error": exc.to_payload()["error"]["message"]}


# NDJSON lines, no end marker, errors as {"error": "..."} (mid-stream too).
OLLAMA = Dialect("ollama", b"", ollama_error, frame=ndjson_line, media_type="application/x-ndjson")


class Options(BaseModel):
    """Ollama's ``options``. Runner options (``num_ctx``, ``num_thread``, ``num_gpu``,
    ``use_mmap``, ``mirostat`` ...) have no meaning here and are ignored: the window and the
    hardware are the server's."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    num_predict: int | None = Field(None, ge=-2, le=1_048_576)  # -1, -2: until the window is full
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=-1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    # -1: random. Tabby sends its u64 seed cast to i32, so other negative seeds come too.
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    repeat_penalty: float | None = Field(None, gt=0.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        return [s for s in value if s] if value is not None else None  # as Ollama: "" is no stop

    def sampling(self) -> Sampling:
        predict = self.num_predict
        seed = self.seed
        if seed is not None:
            seed = None if seed == -1 else seed & 0xFFFFFFFF  # llama.cpp's uint32 seed
        return Sampling(
            max_tokens=None if predict is None or predict < 0 else max(predict, 1),
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_k=DEFAULT_TOP_K if self.top_k is None else max(self.top_k, 0),
            top_p=DEFAULT_TOP_P if self.top_p is None else self.top_p,
            min_p=self.min_p,
            seed=seed,
            stop=self.stop or (),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repeat_penalty or 1.0,
        )


_NAMES = {"max_tokens": "options.num_predict", "stop": "options.stop"}


class _OllamaBody(Body):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    stream: bool | None = None  # absent or null: stream (Ollama's default)
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: str | int | float | None = None  # accepted: the model stays loaded anyway
    think: bool | str | None = None

    @property
    def streaming(self) -> bool:
        return self.stream is not False

    @property
    def warmup(self) -> bool:
        """``num_predict`` 0: process the prompt, generate nothing."""
        return self.options is not None and self.options.num_predict == 0

    def sampling(self) -> Sampling:
        return (self.options or Options.model_validate({})).sampling()

    def refuse_unsupported(self) -> None:
        if self.format:
            raise InvalidRequestError(
                "format (JSON output) is not supported by this server.", param="format"
            )


class GenerateRequest(_OllamaBody):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None

    @property
    def loads_only(self) -> bool:
        """An empty prompt loads the model in Ollama (unloads it with ``keep_alive`` 0):
        nothing to generate."""
        return not self.prompt and not self.suffix

    @property
    def load_reason(self) -> str:
        return "unload" if self.keep_alive in (0, "0", "0s") else "load"

    def to_generation(self, variant: Variant) -> GenerationRequest:
        """Ollama's prompt rules for DeepSeek-Coder: ``raw`` (or the prompt-only template, or a
        prompt that already holds DeepSeek's FIM tokens) is used as is; a ``suffix`` makes
        DeepSeek's FIM prompt; otherwise an instruct checkpoint gets its chat template (with
        ``system``), a base checkpoint the plain prompt."""
        self.refuse_unsupported()
        if self.raw and (self.template or self.system or self.context):
            raise InvalidRequestError(
                "raw mode does not support template, system, or context", param="raw"
            )
        if self.template is not None and self.template.strip() not in _RAW_TEMPLATES:
            raise InvalidRequestError(
                "Custom templates are not supported; send the rendered prompt with raw: true.",
                param="template",
            )
        if self.context:
            raise InvalidRequestError(
                "context is not supported (this server returns none); send the whole prompt.",
                param="context",
            )
        if self.images:
            raise InvalidRequestError("DeepSeek-Coder accepts text only.", param="images")
        sampling = self.sampling()
        special = variant.special
        as_is = (
            self.raw
            or self.template is not None
            or special.fim_begin_text in self.prompt
            or not variant.supports_chat
        )
        prompt: TextPrompts | ChatPrompt
        if self.suffix:
            prompt = TextPrompts([self.prompt], suffix=self.suffix)
        elif as_is:
            prompt = TextPrompts([self.prompt])
        else:
            messages = [ChatMessage("system", self.system)] if self.system else []
            prompt = ChatPrompt([*messages, ChatMessage("user", self.prompt)])
        return GenerationRequest(
            prompt, sampling, fit_max_tokens=True, interactive=True, names=_NAMES
        )


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    role: str
    content: str | None = None
    images: list[str] | None = None
    tool_calls: list[Any] | None = None


class ChatRequest(_OllamaBody):
    messages: list[Message] = Field(default_factory=list, max_length=100_000)
    tools: list[Any] | None = None

    def to_generation(self) -> GenerationRequest:
        self.refuse_unsupported()
        if self.tools:
            raise InvalidRequestError("Tools are not supported by DeepSeek-Coder.", param="tools")
        messages = []
        for i, m in enumerate(self.messages):
            role = m.role.lower()  # Ollama lower-cases roles
            if role not in ("system", "user", "assistant"):
                raise InvalidRequestError(
                    f"Unsupported role {m.role!r}; expected system, user or assistant.",
                    param=f"messages[{i}].role",
                )
            if m.images:
                raise InvalidRequestError(
                    "DeepSeek-Coder accepts text only.", param=f"messages[{i}].images"
                )
            if m.tool_calls:
                raise InvalidRequestError(
                    "Tool calls are not supported by DeepSeek-Coder.",
                    param=f"messages[{i}].tool_calls",
                )
            messages.append(ChatMessage(role, m.content or ""))
        return GenerationRequest(
            ChatPrompt(messages), self.sampling(), fit_max_tokens=True, names=_NAMES
        )


class ShowRequest(Body):
    """``/api/show``: ``model``, or the older ``name`` (Continue and Tabby send ``name``)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    name: str | None = None
    verbose: bool | None = None

    @property
    def requested(self) -> str | None:
        return self.model or self.name
