"""The one validation boundary between the API dialects and the engine.

Every dialect turns its parsed body into a ``GenerationRequest`` (what to render and what the
client asked for, in no dialect's words). ``Validator.validate`` renders and tokenizes the prompt,
applies every limit exactly once (the operator's caps from ``Limits``, the vocabulary, the context
window) and returns a ``ValidRequest``: token ids per prompt and complete ``SamplingOptions``, the
only request the engine path accepts. Errors name the parameter in the dialect's own words
(``GenerationRequest.names``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deepseek_serve.engine import ModelLimits, SamplingOptions, StructuredOutput
from deepseek_serve.errors import ContextWindowExceededError, InvalidRequestError
from deepseek_serve.prompts.packing import PieceCache, pack_repo_prompt
from deepseek_serve.prompts.scheduling import INTERACTIVE_PRIORITY, priority_scheduling
from deepseek_serve.prompts.tokenizer import PromptTokenizer
from deepseek_serve.prompts.variant import Variant
from deepseek_serve.settings import Settings
from deepseek_serve.templates import ChatMessage, render_chat, render_fim
from deepseek_serve.templates.repo import RepoFile

# Text not tokenized before (lines the tokenizer's line cache does not hold) is tokenized in a
# worker thread from this length up. DeepSeek's tokenizer takes about 0.2 ms per KiB here, and
# while it runs in the event loop no other stream moves; the Rust tokenizer releases the GIL, so
# in a thread the loop goes on. Shorter texts cost less than the hop to the thread and back.
OFF_LOOP_CHARS = 4096
# Room kept for the answer when packing a prompt whose request sets no length (llama.cpp's
# n_predict -1: generate until the window is full): at most this, at most a quarter of the window.
UNBOUNDED_RESERVE = 256


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound a request is held to, from the settings and the started engine."""

    max_model_len: int
    vocab_size: int  # ids below this are safe for both the tokenizer and the model's embedding
    max_n: int
    max_stop_sequences: int
    max_logprobs: int
    max_messages: int
    max_prompts: int
    max_tokens: int | None  # the operator's cap on tokens generated per request

    @classmethod
    def build(cls, settings: Settings, model: ModelLimits, tokenizer_size: int) -> Limits:
        return cls(
            max_model_len=model.max_model_len,
            # vLLM checks ids only against the tokenizer; ids past the model's embedding crash
            # its engine core, so the smaller of the two bounds what we accept.
            vocab_size=min(tokenizer_size, model.model_vocab_size),
            max_n=settings.max_n,
            max_stop_sequences=settings.max_stop_sequences,
            max_logprobs=settings.max_logprobs,
            max_messages=settings.max_messages,
            max_prompts=settings.max_prompts,
            max_tokens=settings.max_tokens_limit,
        )


@dataclass(frozen=True, slots=True)
class TextPrompts:
    """One or more completion prompts (text or token ids); with ``suffix``, fill-in-the-middle."""

    items: Sequence[str | list[int]]
    suffix: str | None = None


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    messages: Sequence[ChatMessage]
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the last message stays open: the model continues it


@dataclass(frozen=True, slots=True)
class RepoPrompt:
    """The current file around the cursor plus other files, packed into the window."""

    files: Sequence[RepoFile]
    prefix: str
    suffix: str | None  # None: plain completion of the current file
    filename: str | None = None
    reserve: int | None = None  # tokens kept for the answer; None: ``UNBOUNDED_RESERVE`` rule


@dataclass(frozen=True, slots=True)
class Sampling:
    """What the client asked for; ``None`` means not given."""

    max_tokens: int | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # 0 or -1: off
    min_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False  # the variant's stop tokens do not stop
    allowed_token_ids: Sequence[int] | None = None  # sampling only among these
    structured: StructuredOutput | None = None  # output constrained to a schema, regex ...
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    priority: int = 0
    user: str | None = None  # a routing hint for replicas (OpenAI's 'user')


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: TextPrompts | ChatPrompt | RepoPrompt
    sampling: Sampling = field(default_factory=Sampling)
    # max_tokens when not given: None means whatever room the window leaves.
    default_max_tokens: int | None = None
    # llama.cpp's and Ollama's rule: a max_tokens past the window's end (or the operator's cap)
    # generates up to there, instead of a 400 (Continue asks 4096 tokens whatever the prompt).
    fit_max_tokens: bool = False
    # Editor traffic: runs first under priority scheduling unless it names its own priority.
    interactive: bool = False
    # Server-chosen stop strings (e.g. a language's next top-level unit): not the client's, so
    # not counted against its cap.
    extra_stop: Sequence[str] = ()
    # The dialect's names for the parameters errors mention ("max_tokens", "stop", "n",
    # "logprobs", "prompt", "messages", "logit_bias", "stop_token_ids").
    names: Mapping[str, str] = field(default_factory=dict)

    def name(self, param: str) -> str:
        return self.names.get(param, param)


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    token_ids: list[int]
    text: str  # what ``echo`` returns


@dataclass(frozen=True, slots=True)
class ValidRequest:
    prompts: list[TokenPrompt]
    options: SamplingOptions
    tokens_dropped: int | None = None  # repository packing: context left out to fit


@dataclass(frozen=True, slots=True)
class Validator:
    tokenizer: PromptTokenizer
    limits: Limits
    priority_scheduling: bool = False
    context_cache: PieceCache | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        tokenizer: PromptTokenizer,
        model: ModelLimits,
        context_cache: PieceCache | None = None,
    ) -> Validator:
        return cls(
            tokenizer,
            Limits.build(settings, model, len(tokenizer)),
            priority_scheduling(settings),
            context_cache,
        )

    @property
    def variant(self) -> Variant:
        return self.tokenizer.variant

    async def validate(self, req: GenerationRequest) -> ValidRequest:
        s = req.sampling
        self._check_caps(req)
        tokens_dropped = None
        if isinstance(req.prompt, RepoPrompt):
            prompt, tokens_dropped = await asyncio.to_thread(self._pack, req, req.prompt)
            prompts = [prompt]
        elif isinstance(req.prompt, ChatPrompt):
            prompts = [await self._chat(req.prompt)]
        else:
            prompts = await self._texts(req, req.prompt)
        longest = max(len(p.token_ids) for p in prompts)
        max_tokens = self._max_tokens(req, longest)
        if s.min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({s.min_tokens}) exceeds {req.name('max_tokens')} ({max_tokens}).",
                param="min_tokens",
            )
        stop_ids = tuple(s.stop_token_ids)
        self.check_ids(stop_ids, req.name("stop_token_ids"))
        bias = dict(s.logit_bias) if s.logit_bias else None
        if bias:
            self.check_ids(tuple(bias), req.name("logit_bias"))
        allowed = tuple(s.allowed_token_ids) if s.allowed_token_ids else None
        if allowed:
            self.check_ids(allowed, req.name("allowed_token_ids"))
        variant_stops = self._variant_stops(req.prompt)
        priority = s.priority
        if priority == 0 and req.interactive and self.priority_scheduling:
            priority = INTERACTIVE_PRIORITY
        options = SamplingOptions(
            max_tokens=max_tokens,
            n=s.n,
            temperature=1.0 if s.temperature is None else s.temperature,
            top_p=1.0 if s.top_p is None else s.top_p,
            top_k=0 if s.top_k in (None, -1) else s.top_k,
            min_p=s.min_p or 0.0,
            seed=s.seed,
            stop=tuple(dict.fromkeys((*s.stop, *req.extra_stop))),
            stop_token_ids=tuple(dict.fromkeys((() if s.ignore_eos else variant_stops) + stop_ids)),
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty,
            logprobs=s.logprobs,
            prompt_logprobs=s.prompt_logprobs,
            logit_bias=bias,
            allowed_token_ids=allowed,
            structured=s.structured,
            min_tokens=s.min_tokens,
            priority=priority,
            session=s.user,
        )
        return ValidRequest(prompts, options, tokens_dropped)

    def _variant_stops(self, prompt: TextPrompts | ChatPrompt | RepoPrompt) -> tuple[int, ...]:
        """Chat ends at the turn's end; fill-in-the-middle at end-of-sentence (DeepSeek's
        README); a plain completion at either (its prompt may be a chat turn the client
        rendered itself)."""
        if isinstance(prompt, ChatPrompt):
            return self.variant.chat_stop_ids
        if prompt.suffix is not None:
            return self.variant.completion_stop_ids
        return self.variant.text_stop_ids

    def _check_caps(self, req: GenerationRequest) -> None:
        lim, s, prompt = self.limits, req.sampling, req.prompt
        values = {
            "n": (s.n, lim.max_n),
            "logprobs": (s.logprobs, lim.max_logprobs),
            "prompt_logprobs": (s.prompt_logprobs, lim.max_logprobs),
        }
        counts = {"stop": (len(s.stop), lim.max_stop_sequences)}
        if isinstance(prompt, ChatPrompt):
            counts["messages"] = (len(prompt.messages), lim.max_messages)
        elif isinstance(prompt, TextPrompts) and len(prompt.items) > 1:
            counts["prompt"] = (len(prompt.items), lim.max_prompts)
        for param, (value, cap) in values.items():
            if value is not None and value > cap:
                raise InvalidRequestError(
                    f"{req.name(param)} is {value}; this server allows at most {cap}.",
                    param=req.name(param),
                    code="limit_exceeded",
                )
        for param, (count, cap) in counts.items():
            if count > cap:
                raise InvalidRequestError(
                    f"{req.name(param)} has {count} items; this server allows at most {cap}.",
                    param=req.name(param),
                    code="limit_exceeded",
                )

    def _max_tokens(self, req: GenerationRequest, prompt_len: int) -> int:
        """Tokens to generate; a prompt that leaves no room is refused, never truncated."""
        window = self.limits.max_model_len
        room = window - prompt_len
        requested, default = req.sampling.max_tokens, req.default_max_tokens
        if room <= 0:
            raise ContextWindowExceededError(
                f"The prompt is {prompt_len} tokens; this model's context window is {window}.",
                param=req.name("messages" if isinstance(req.prompt, ChatPrompt) else "prompt"),
            )
        cap = self.limits.max_tokens
        param = req.name("max_tokens")
        if requested is None or req.fit_max_tokens:
            chosen = room if default is None else min(default, room)
            chosen = chosen if requested is None else min(requested, room)
            return chosen if cap is None else min(chosen, cap)
        if cap is not None and requested > cap:
            raise InvalidRequestError(
                f"{param} is {requested}; this server allows at most {cap}.",
                param=param,
                code="max_tokens_too_large",
            )
        if requested > room:
            raise ContextWindowExceededError(
                f"This model's context window is {window} tokens; the prompt is {prompt_len} "
                f"and {param} is {requested} (at most {room} fit).",
                param=param,
            )
        return requested

    def check_ids(self, ids: Sequence[int], param: str) -> None:
        limit = self.limits.vocab_size
        for j, token_id in enumerate(ids):
            if token_id < 0:
                raise InvalidRequestError(
                    f"Token ids must be >= 0, got {token_id}.",
                    param=f"{param}[{j}]",
                    code="invalid_token_id",
                )
            if token_id >= limit:
                raise InvalidRequestError(
                    f"Token id {token_id} is outside the vocabulary (0..{limit - 1}).",
                    param=f"{param}[{j}]",
                    code="invalid_token_id",
                )

    async def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        plan = tok.plan(text)  # lines seen before need no tokenizing
        if plan.missing_chars < OFF_LOOP_CHARS:
            return tok.finish(plan, tok.work(plan))
        return tok.finish(plan, await asyncio.to_thread(tok.work, plan))

    async def _texts(self, req: GenerationRequest, prompt: TextPrompts) -> list[TokenPrompt]:
        items = prompt.items
        out = []
        for i, item in enumerate(items):
            param = req.name("prompt") if len(items) == 1 else f"{req.name('prompt')}[{i}]"
            if isinstance(item, str):
                text = (
                    item if prompt.suffix is None else render_fim(item, prompt.suffix, self.variant)
                )
                out.append(TokenPrompt(await self.encode(text), item))
            else:
                if prompt.suffix is not None:
                    raise InvalidRequestError(
                        "suffix needs a text prompt, not token ids", param="suffix"
                    )
                self.check_ids(item, param)
                out.append(TokenPrompt(item, self.tokenizer.decode(item)))
        return out

    async def chat_tokens(self, prompt: ChatPrompt) -> TokenPrompt:
        """A chat rendered with the checkpoint's template and tokenized, as generation does."""
        return await self._chat(prompt)

    async def _chat(self, prompt: ChatPrompt) -> TokenPrompt:
        if not self.variant.supports_chat:
            raise InvalidRequestError(
                "This is a base checkpoint with no chat template; "
                "use /v1/completions (plain or with suffix for fill-in-the-middle).",
                param="messages",
                code="chat_not_supported",
            )
        text = render_chat(
            list(prompt.messages),
            self.variant,
            add_generation_prompt=prompt.add_generation_prompt,
            continue_final_message=prompt.continue_final_message,
        )
        return TokenPrompt(await self.encode(text), text)

    def _pack(self, req: GenerationRequest, prompt: RepoPrompt) -> tuple[TokenPrompt, int]:
        window = self.limits.max_model_len
        reserve = prompt.reserve
        if reserve is None:
            reserve = min(UNBOUNDED_RESERVE, window // 4)
        packed = pack_repo_prompt(
            self.tokenizer,
            files=prompt.files,
            prefix=prompt.prefix,
            suffix=prompt.suffix,
            budget=window - max(reserve, 1),
            filename=prompt.filename,
            budget_param=req.name("max_tokens"),
            cache=self.context_cache,
        )
        return TokenPrompt(packed.token_ids, packed.text), packed.tokens_dropped


def non_empty_stops(value: str | list[str] | None) -> str | list[str] | None:
    """A request's ``stop`` as sent (one string or a list), refused if any is empty. How many
    is the operator's cap, applied in ``Validator``."""
    stops = [value] if isinstance(value, str) else value or []
    if any(not s for s in stops):
        raise ValueError("stop sequences must be non-empty")
    return value


def token_id_keys(bias: Mapping[str, float], param: str = "logit_bias") -> dict[int, float]:
    """JSON object keys that must be token ids (``logit_bias``): ASCII digits only, so that
    ``"²"`` or ``"٣"`` (digits to ``str.isdigit``, not to ``int``) are a 400, not a crash."""
    out = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise InvalidRequestError(
                f"{param} keys must be token ids, got {key[:32]!r}.", param=param
            )
        out[int(key)] = value
    return out
