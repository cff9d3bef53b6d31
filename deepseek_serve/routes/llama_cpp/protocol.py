"""llama.cpp's server dialect (``/completion``, ``/infill``): request bodies and error shape.

Plugins written for llama.cpp's server (llama.vscode, llama.vim) send these bodies; unknown
fields are ignored as llama.cpp does (plugins add fields between releases), every field we use is
checked. Responses are llama.cpp's flat objects (``content``, ``stop``, ``tokens_predicted``,
``tokens_evaluated``, ``timings`` ...), streams are ``data: {...}`` frames without ``[DONE]``, and
errors are ``{"error": {"code", "message", "type"}}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from deepseek_serve.errors import APIError, InvalidRequestError
from deepseek_serve.http.body import Body
from deepseek_serve.http.streaming import Dialect
from deepseek_serve.prompts.validation import (
    GenerationRequest,
    RepoPrompt,
    Sampling,
    TextPrompts,
    non_empty_stops,
    token_id_keys,
)
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
    time: Any = None  # sent by llama.vim and llama.vscode (when the chunk was read); not used

    @field_validator("filename")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("a filename must be a single line")
        return value


# llama.cpp reports this seed when none was set (LLAMA_DEFAULT_SEED): vLLM then draws its own.
DEFAULT_SEED = 4294967295


class LlamaFields(Body):
    """What ``/completion`` and ``/infill`` share: llama.cpp's sampling fields and defaults and
    its ways of asking for more (``n_cmpl``, ``n_probs``, ``return_tokens``). Fields llama.cpp
    has and vLLM cannot honour (``mirostat``, ``samplers``, ``penalty_last_n`` ...) are ignored,
    as llama.cpp ignores keys it does not know."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    # -1: until a stop or the window is full; 0: only process the prompt (a cache warm-up).
    # llama.cpp falls back to max_completion_tokens, then max_tokens (twinny sends max_tokens).
    n_predict: int | None = Field(None, ge=-1, le=1_048_576)
    max_completion_tokens: int | None = Field(None, ge=-1, le=1_048_576)
    max_tokens: int | None = Field(None, ge=-1, le=1_048_576)
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
    ignore_eos: bool = False
    n_probs: int = Field(0, ge=0, le=1024)  # how many: settings.max_logprobs
    return_tokens: bool = False
    n_cmpl: int | None = Field(None, ge=1, le=1024)  # completions per prompt; falls back to n
    n: int | None = Field(None, ge=1, le=1024)
    stream: bool = False
    n_indent: int = Field(0, ge=0, le=1024)
    t_max_predict_ms: int = Field(0, ge=0)
    t_max_prompt_ms: int = -1  # accepted; prompt processing is not interrupted
    cache_prompt: bool = True
    samplers: list[str] | str | None = None  # accepted; vLLM's sampler order is fixed
    response_fields: list[str] | None = Field(None, max_length=64)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)  # extension

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

    _stops = field_validator("stop")(non_empty_stops)

    def bias_by_id(self) -> dict[int, float] | None:
        if not self.logit_bias:
            return None
        if isinstance(self.logit_bias, dict):
            return token_id_keys(self.logit_bias)
        return dict(self.logit_bias)

    @property
    def predict(self) -> int:
        """``n_predict`` as llama.cpp resolves it."""
        for value in (self.n_predict, self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return -1

    @property
    def completions(self) -> int:
        return self.n_cmpl or self.n or 1

    @property
    def names(self) -> dict[str, str]:
        """llama.cpp's names for the parameters errors mention."""
        n_predict = next(
            (name for name in ("n_predict", "max_completion_tokens", "max_tokens")
             if getattr(self, name) is not None),
            "n_predict",
        )  # fmt: skip
        return {"max_tokens": n_predict, "n": "n_cmpl" if self.n_cmpl else "n",
                "logprobs": "n_probs"}  # fmt: skip

    def sampling(self) -> Sampling:
        """llama.cpp's meanings: ``n_predict`` -1 generates until a stop or the window is full,
        0 only processes the prompt (a cache warm-up); ``top_k`` 0 or -1 and ``seed`` -1 are
        off."""
        n_predict = self.predict
        return Sampling(
            max_tokens=1 if n_predict == 0 else (n_predict if n_predict > 0 else None),
            n=self.completions,
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
            ignore_eos=self.ignore_eos,
            logprobs=self.n_probs or None,
            priority=self.priority,
        )

    def generation_settings(self, n_ctx: int) -> dict[str, Any]:
        """llama.cpp's ``generation_settings``: what this request ran with."""
        return {
            "n_ctx": n_ctx,
            "n_predict": self.predict,
            "seed": DEFAULT_SEED if self.seed in (None, -1) else self.seed,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
            "n_probs": self.n_probs,
            "stream": self.stream,
            "n_indent": self.n_indent,
            "t_max_predict_ms": self.t_max_predict_ms,
        }


class InfillRequest(LlamaFields):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=1024)
    prompt: str = ""  # text of the cursor's line before the cursor; appended to the prefix
    filename: str | None = Field(None, max_length=4096)  # extension: the current file's path

    @field_validator("input_extra", mode="before")
    @classmethod
    def _extra_is_a_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
            raise ValueError(_EXTRA_SHAPE)
        return value

    def to_generation(self) -> GenerationRequest:
        n_predict = self.predict
        prompt = RepoPrompt(
            files=[RepoFile(c.filename, c.text) for c in self.input_extra],
            prefix=self.input_prefix + self.prompt,
            suffix=self.input_suffix,
            filename=self.filename,
            reserve=n_predict if n_predict > 0 else None,
        )
        return GenerationRequest(prompt, self.sampling(), interactive=True, names=self.names)

    @model_validator(mode="after")
    def _something_to_fill(self) -> InfillRequest:
        # Plugins warm the cache with n_predict 0 and empty prefix and suffix: that is fine.
        if self.predict != 0 and not (self.input_prefix or self.input_suffix or self.prompt):
            raise InvalidRequestError(
                "input_prefix, input_suffix and prompt are all empty: there is nothing to fill in.",
                param="input_prefix",
            )
        return self


class CompletionRequest(LlamaFields):
    """``/completion``: ``prompt`` is text, token ids, or a list of those (one result each).
    Clients render DeepSeek's FIM template into the text themselves: it is tokenized as is,
    special-token texts included."""

    prompt: str | list[int] | list[str | list[int]]

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("the prompt list is empty")
            kinds = {type(item) for item in value}
            if int in kinds and kinds != {int}:
                raise ValueError(
                    "token ids and text mixed in one prompt are not supported; send text, "
                    "token ids, or a list of prompts"
                )
        elif isinstance(value, dict):
            raise ValueError("multimodal prompt objects are not supported; send text or token ids")
        return value

    def to_generation(self) -> GenerationRequest:
        prompt = self.prompt
        items: list[str | list[int]]
        if isinstance(prompt, str):
            items = [prompt]
        elif all(isinstance(item, int) for item in prompt):
            items = [[int(item) for item in prompt]]  # type: ignore[arg-type]
        else:
            items = list(prompt)  # type: ignore[arg-type]
        # One prompt is an editor's completion (Continue, Tabby, twinny): it runs first under
        # priority scheduling, as single-prompt /v1/completions does; several are batch work.
        return GenerationRequest(
            TextPrompts(items),
            self.sampling(),
            fit_max_tokens=True,
            interactive=len(items) == 1,
            names=self.names,
        )


def llama_error(exc: APIError) -> dict[str, Any]:
    """llama.cpp's error body for ``exc`` (plus ``param``); 500s say nothing internal."""
    error = exc.to_payload()["error"]
    status = exc.status_code
    kind = _LLAMA_TYPES.get(status, "server_error" if status >= 500 else error["type"])
    message, param = error["message"], error["param"]
    return {"error": {"code": status, "message": message, "type": kind, "param": param}}


# llama.cpp streams end without [DONE]; errors are its own shape, mid-stream too.
LLAMA_CPP = Dialect("llama.cpp", b"", llama_error)
