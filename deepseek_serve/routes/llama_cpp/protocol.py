"""llama.cpp's ``/infill`` dialect: its request body, its stop rules and its response shape.

Plugins written for llama.cpp's server (llama.vscode, llama.vim) send these bodies; unknown
fields are ignored as llama.cpp does (plugins add fields between releases), every field we use is
checked. Responses are llama.cpp's flat objects (``content``, ``stop``, ``tokens_predicted``,
``tokens_evaluated``, ``timings`` ...), streams are ``data: {...}`` frames without ``[DONE]``, and
errors are ``{"error": {"code", "message", "type"}}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from deepseek_serve.engine import EngineOutput
from deepseek_serve.errors import APIError, InvalidRequestError
from deepseek_serve.http.body import Body
from deepseek_serve.http.streaming import Dialect, aclose, sse_frame
from deepseek_serve.prompts.validation import GenerationRequest, RepoPrompt, Sampling, token_id_keys
from deepseek_serve.templates.repo import RepoFile

_LLAMA_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
_EXTRA_SHAPE = '"input_extra" must be an array of {"filename": string, "text": string}'


class ExtraChunk(BaseModel):
    """A piece of another file. Plugins also send ``time``; it is ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    filename: str = Field(min_length=1, max_length=4096)
    text: str

    @field_validator("filename")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("a filename must be a single line")
        return value


class InfillRequest(Body):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=1024)
    prompt: str = ""  # text of the cursor's line before the cursor; appended to the prefix
    filename: str | None = Field(None, max_length=4096)  # extension: the current file's path
    n_predict: int = Field(-1, ge=-1, le=1_048_576)  # -1: until a stop or the window is full
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_k: int = Field(40, ge=-1)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-1, le=2**64 - 1)  # -1: random, as in llama.cpp
    stop: list[str] = Field(default_factory=list)  # how many: settings.max_stop_sequences
    # {"id": bias} or llama.cpp's [[id, bias], ...]
    # JSON has no tuples: llama.cpp's [[id, bias]] pairs arrive as lists
    logit_bias: dict[str, float] | list[Annotated[tuple[int, float], Strict(False)]] | None = Field(
        None, max_length=1024
    )
    stream: bool = False
    n_indent: int = Field(0, ge=0, le=1024)
    t_max_predict_ms: int = Field(0, ge=0)
    t_max_prompt_ms: int = -1  # accepted; prompt processing is not interrupted
    cache_prompt: bool = True
    samplers: list[str] | str | None = None  # accepted; vLLM's sampler order is fixed
    response_fields: list[str] | None = Field(None, max_length=64)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)  # extension

    @field_validator("input_extra", mode="before")
    @classmethod
    def _extra_is_a_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
            raise ValueError(_EXTRA_SHAPE)
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(
        cls, value: dict[str, float] | list[tuple[int, float]] | None
    ) -> dict[str, float] | list[tuple[int, float]] | None:
        if isinstance(value, dict):
            token_id_keys(value)
        pairs = value.items() if isinstance(value, dict) else value or []
        for _, bias in pairs:
            if not -100.0 <= bias <= 100.0:
                raise ValueError("biases must be within [-100, 100]")
        return value

    def bias_by_id(self) -> dict[int, float] | None:
        if not self.logit_bias:
            return None
        if isinstance(self.logit_bias, dict):
            return token_id_keys(self.logit_bias)
        return dict(self.logit_bias)

    def to_generation(self) -> GenerationRequest:
        """llama.cpp's meanings: ``n_predict`` -1 generates until a stop or the window is full,
        0 only processes the prompt (a cache warm-up); ``top_k`` 0 or -1 and ``seed`` -1 are
        off."""
        n_predict = self.n_predict
        prompt = RepoPrompt(
            files=[RepoFile(c.filename, c.text) for c in self.input_extra],
            prefix=self.input_prefix + self.prompt,
            suffix=self.input_suffix,
            filename=self.filename,
            reserve=n_predict if n_predict > 0 else None,
        )
        sampling = Sampling(
            max_tokens=1 if n_predict == 0 else (n_predict if n_predict > 0 else None),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            min_p=self.min_p,
            seed=None if self.seed in (None, -1) else self.seed,
            stop=self.stop,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repeat_penalty,
            logit_bias=self.bias_by_id(),
            priority=self.priority,
        )
        return GenerationRequest(
            prompt, sampling, interactive=True, names={"max_tokens": "n_predict"}
        )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @model_validator(mode="after")
    def _something_to_fill(self) -> InfillRequest:
        # Plugins warm the cache with n_predict 0 and empty prefix and suffix: that is fine.
        if self.n_predict != 0 and not (self.input_prefix or self.input_suffix or self.prompt):
            raise InvalidRequestError(
                "input_prefix, input_suffix and prompt are all empty: there is nothing to fill in.",
                param="input_prefix",
            )
        return self


def llama_error(exc: APIError) -> dict[str, Any]:
    """llama.cpp's error body for ``exc`` (plus ``param``); 500s say nothing internal."""
    error = exc.to_payload()["error"]
    status = exc.status_code
    kind = _LLAMA_TYPES.get(status, "server_error" if status >= 500 else error["type"])
    message, param = error["message"], error["param"]
    return {"error": {"code": status, "message": message, "type": kind, "param": param}}


# llama.cpp streams end without [DONE]; errors are its own shape, mid-stream too.
LLAMA_CPP = Dialect("llama.cpp", b"", llama_error)


def indent_cut(text: str, start: int, n_indent: int) -> tuple[int | None, int]:
    """llama.cpp's ``n_indent`` rule: a line after the first that is indented less than
    ``n_indent`` ends the completion just before its first non-blank character. Lines are
    checked from ``start`` (a line start); returns the cut (or None) and where to resume."""
    while True:
        newline = text.find("\n", start)
        if newline == -1:
            return None, start
        line = newline + 1
        pos = line
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):  # indentation still incomplete
            return None, newline
        if pos - line < n_indent:
            return pos, newline
        start = line


async def line_limits(
    outputs: AsyncIterator[tuple[int, EngineOutput]],
    n_indent: int,
    t_max_predict_ms: int,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[tuple[int, EngineOutput]]:
    """``outputs`` cut by ``n_indent``, and ended at the first newline after
    ``t_max_predict_ms`` of generation; ending early closes (aborts) the engine request."""
    text, scan, started = "", 0, None
    try:
        async for i, out in outputs:
            started = clock() if started is None else started
            if not out.sequences:
                yield i, out
                continue
            seq = out.sequences[0]
            before = len(text)
            text += seq.text
            if n_indent:
                cut, scan = indent_cut(text, scan, n_indent)
                if cut is not None:
                    seq.text = text[before : max(cut, before)]
                    seq.finish_reason, seq.stop_reason, out.finished = "length", None, True
                    yield i, out
                    return
            if (
                t_max_predict_ms
                and seq.finish_reason is None
                and "\n" in seq.text
                and (clock() - started) * 1000 > t_max_predict_ms
            ):
                seq.finish_reason, out.finished = "length", True
                yield i, out
                return
            yield i, out
    finally:
        await aclose(outputs)


def _pick(body: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """llama.cpp's ``response_fields``: ``"timings/prompt_n"`` -> that value, flat."""
    picked: dict[str, Any] = {}
    for path in paths:
        value: Any = body
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            picked[path] = value
    return picked


@dataclass(slots=True)
class InfillFormatter:
    """Engine outputs to llama.cpp ``/infill`` bodies and stream frames."""

    model: str
    prompt_tokens: int
    tokens_dropped: int
    settings: dict[str, Any]
    response_fields: list[str] | None = None
    warmup: bool = False  # n_predict 0: the prompt is processed, nothing is returned
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    first: float | None = None
    ended: float | None = None
    parts: list[str] = field(default_factory=list)
    predicted: int = 0
    cached: int = 0
    finish: str | None = None
    stop_reason: int | str | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def _take(self, out: EngineOutput) -> str:
        now = self.clock()
        if self.first is None:
            self.first, self.cached = now, out.num_cached_tokens
        self.ended = now
        text = ""
        for seq in out.sequences[:1]:
            if not self.warmup:
                text = seq.text
                self.predicted += len(seq.token_ids)
            if seq.finish_reason is not None:
                self.finish, self.stop_reason = seq.finish_reason, seq.stop_reason
        return text

    def _partial(self, text: str) -> dict[str, Any]:
        return {
            "index": 0,
            "content": text,
            "tokens": [],
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": self.predicted,
            "tokens_evaluated": self.prompt_tokens,
        }

    def final(self, content: str) -> dict[str, Any]:
        word = self.stop_reason if isinstance(self.stop_reason, str) else ""
        stop_type = ("word" if word else "eos") if self.finish == "stop" else "limit"
        body = {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": -1,
            "stop": True,
            "model": self.model,
            "tokens_predicted": self.predicted,
            "tokens_evaluated": self.prompt_tokens,
            "generation_settings": self.settings,
            "has_new_line": "\n" in content,
            "truncated": self.tokens_dropped > 0,
            "stop_type": stop_type,
            "stopping_word": word,
            "tokens_cached": self.cached,
            "tokens_dropped": self.tokens_dropped,
            "timings": self._timings(),
        }
        return body if self.response_fields is None else _pick(body, self.response_fields)

    def _timings(self) -> dict[str, float]:
        first = self.first if self.first is not None else self.clock()
        ended = self.ended if self.ended is not None else first
        prompt_n = max(self.prompt_tokens - self.cached, 0)
        prompt_ms = (first - self.started) * 1000
        predicted_ms = (ended - first) * 1000
        return {
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1000 * prompt_n / prompt_ms if prompt_ms > 0 else 0.0,
            "predicted_n": self.predicted,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / self.predicted if self.predicted else 0.0,
            "predicted_per_second": (
                1000 * self.predicted / predicted_ms if predicted_ms > 0 else 0.0
            ),
        }

    async def frames(
        self, outputs: AsyncIterator[tuple[int, EngineOutput]]
    ) -> AsyncIterator[bytes]:
        async for _, out in outputs:
            text = self._take(out)
            if text:
                yield sse_frame(self._partial(text))
        yield sse_frame(self.final(""))  # llama.cpp: the text went in the partial frames

    async def collect(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> dict[str, Any]:
        async for _, out in outputs:
            self.parts.append(self._take(out))
        return self.final("".join(self.parts))
