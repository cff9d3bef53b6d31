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

from pydantic import ConfigDict, Field, field_validator

from deepseek_serve.http.body import Body
from deepseek_serve.prompts.validation import (
    ChatPrompt,
    GenerationRequest,
    Sampling,
    TextPrompts,
    non_empty_stops,
)
from deepseek_serve.routes.openai.protocol import ChatMessageIn

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


class _Base(Body):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    max_tokens: int | None = Field(None, ge=1)  # default: DEFAULT_MAX_TOKENS or the room left
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    stop: str | list[str] | None = None  # how many: settings.max_stop_sequences
    stream: bool = False

    _stops = field_validator("stop")(non_empty_stops)

    def _generation(
        self, prompt: TextPrompts | ChatPrompt, extra_stop: tuple[str, ...] = ()
    ) -> GenerationRequest:
        own = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        sampling = Sampling(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, stop=own
        )
        return GenerationRequest(
            prompt,
            sampling,
            default_max_tokens=DEFAULT_MAX_TOKENS,
            interactive=isinstance(prompt, TextPrompts),
            extra_stop=extra_stop,
        )


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

    def to_generation(self) -> GenerationRequest:
        return self._generation(TextPrompts([self.prompt]), language_stops(self.language))


class ApiInsertion(_Base):
    prefix: str
    suffix: str

    def to_generation(self) -> GenerationRequest:
        return self._generation(TextPrompts([self.prefix], self.suffix))


class ApiChat(_Base):
    messages: list[ChatMessageIn] = Field(min_length=1)

    def to_generation(self) -> GenerationRequest:
        messages = [m.to_message(i) for i, m in enumerate(self.messages)]
        return self._generation(ChatPrompt(messages))
