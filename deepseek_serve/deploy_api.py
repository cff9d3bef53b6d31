"""The REST API of the original DeepSeek-Coder deployment guide, on the same machinery.

``POST /api/v1/completion`` (``text_completion``, ids ``cmpl-``), ``/api/v1/insertion``
(``text_insertion``, ``ins-``) and ``/api/v1/chat`` (``chat.completion``, ``chat-``) take the
guide's small bodies, which are turned into the OpenAI-compatible requests (same validation,
prompts, stops and streaming) and answered in the guide's shapes: choices carry ``text`` (or
``message``), ``index`` and ``finish_reason``, and every body has ``usage``. Extensions:
``stream`` (OpenAI-style chunks ending in ``[DONE]``), ``stop`` and ``session_id``.

``language`` (completion): the completion ends where the model starts the next top-level
definition of that language (a new unindented ``def``/``class`` in Python, ``func`` in Go ...),
so a completion is one unit of code rather than whatever follows it. Names are
case-insensitive; an unknown one is a 400 listing those known.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from deepseek_serve.protocol import (
    MAX_STOP_SEQUENCES,
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    _Strict,
    _to_invalid_request,
)

DEFAULT_MAX_TOKENS = 500
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95

_PYTHON = ("\ndef ", "\nclass ", "\nasync def ", "\nif __name__", "\n@")
_JS = ("\nfunction ", "\nexport ", "\nclass ", "\nconst ", "\nasync function ")
LANGUAGE_STOPS: dict[str, tuple[str, ...]] = {
    "python": _PYTHON,
    "javascript": _JS,
    "typescript": (*_JS, "\ninterface ", "\ntype "),
    "go": ("\nfunc ", "\ntype ", "\nvar ", "\nconst "),
    "rust": ("\nfn ", "\npub fn ", "\nimpl ", "\nstruct ", "\npub struct ", "\nenum ", "\n#["),
    "ruby": ("\ndef ", "\nclass ", "\nmodule "),
    "php": ("\nfunction ", "\nclass "),
    "kotlin": ("\nfun ", "\nclass ", "\nobject "),
    "swift": ("\nfunc ", "\nclass ", "\nstruct ", "\nextension "),
    "lua": ("\nfunction ", "\nlocal function "),
    "shell": ("\nfunction ",),
    # Brace languages whose top-level units start with a type: no safe marker, no extra stops.
    "c": (),
    "cpp": (),
    "java": (),
    "csharp": (),
}
LANGUAGE_ALIASES = {"py": "python", "js": "javascript", "ts": "typescript", "golang": "go",
                    "rs": "rust", "rb": "ruby", "kt": "kotlin", "c++": "cpp", "c#": "csharp",
                    "cs": "csharp", "bash": "shell", "sh": "shell"}  # fmt: skip


def language_stops(language: str | None) -> tuple[str, ...]:
    if language is None:
        return ()
    name = LANGUAGE_ALIASES.get(language.lower(), language.lower())
    return LANGUAGE_STOPS[name]


class _Base(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)  # default: DEFAULT_MAX_TOKENS or the room left
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    session_id: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} non-empty stop sequences")
        return value

    def common(self, stop: list[str] | None) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "stop": stop, "stream": self.stream}  # fmt: skip

    def stops(self, extra: tuple[str, ...] = ()) -> list[str] | None:
        own = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        merged = list(dict.fromkeys([*own, *extra]))[:MAX_STOP_SEQUENCES]
        return merged or None


class ApiCompletion(_Base):
    prompt: str
    language: str | None = None

    @field_validator("language")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None:
            name = value.lower()
            if LANGUAGE_ALIASES.get(name, name) not in LANGUAGE_STOPS:
                raise ValueError(f"unknown language; known: {', '.join(sorted(LANGUAGE_STOPS))}")
        return value

    def to_openai(self) -> CompletionRequest:
        stops = self.stops(language_stops(self.language))
        return CompletionRequest.model_validate({"prompt": self.prompt, **self.common(stops)})


class ApiInsertion(_Base):
    prefix: str
    suffix: str

    def to_openai(self) -> CompletionRequest:
        body = {"prompt": self.prefix, "suffix": self.suffix, **self.common(self.stops())}
        return CompletionRequest.model_validate(body)


class ApiChat(_Base):
    messages: list[ChatMessageIn] = Field(min_length=1)

    def to_openai(self) -> ChatCompletionRequest:
        body = {"messages": list(self.messages), **self.common(self.stops())}
        return ChatCompletionRequest.model_validate(body)


def to_openai(api: ApiCompletion | ApiInsertion) -> CompletionRequest:
    try:
        return api.to_openai()
    except ValidationError as exc:  # bounds are the same; kept as a safety net
        raise _to_invalid_request(exc) from None
