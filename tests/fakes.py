"""A fake engine for the in-process tier: real DeepSeek tokenizer, deterministic output, no vLLM.

It honours the parts of the engine contract the HTTP layer relies on (n, max_tokens, stop token
ids, stop strings, logprobs, seeds, allowed token ids, abort on close) and can fail on purpose.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from deepseek_serve.engine import (
    Engine,
    EngineOutput,
    ModelLimits,
    SamplingOptions,
    SequenceDelta,
    TokenLogprob,
)
from deepseek_serve.errors import EngineDeadError, InternalError
from deepseek_serve.prompts.tokenizer import PromptTokenizer

# Plain word pieces of the DeepSeek vocabulary, so outputs decode to readable text.
WORDS = [" alpha", " beta", " gamma", " delta", "\n", " return", " x", " =", "1"]


@dataclass
class FakeEngine(Engine):
    tokenizer: PromptTokenizer
    max_model_len: int = 256
    model_vocab_size: int = 32256
    token_delay: float = 0.0
    fail_after: int | None = None  # raise mid-stream after this many outputs
    fail_with: type[Exception] = InternalError
    start_error: Exception | None = None
    start_delay: float = 0.0
    script: list[int] | None = None  # exact token ids to produce (per sequence)
    limits: ModelLimits = field(default_factory=lambda: ModelLimits(0, 0))
    running: set[str] = field(default_factory=set)
    seen: list[tuple[str, list[int], SamplingOptions]] = field(default_factory=list)
    dead: bool = False

    def __post_init__(self) -> None:
        self.word_ids: list[int] = []
        for word in WORDS:
            (token_id,) = self.tokenizer.hf.encode(word, add_special_tokens=False)
            self.word_ids.append(token_id)

    async def start(self) -> None:
        await asyncio.sleep(self.start_delay)
        if self.start_error is not None:
            raise self.start_error
        self.limits = ModelLimits(self.max_model_len, self.model_vocab_size)

    def _choose(self, rng: random.Random, step: int, options: SamplingOptions) -> int:
        if self.script is not None:
            return self.script[step % len(self.script)]
        return rng.choice(options.allowed_token_ids or self.word_ids)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        if self.dead:
            raise EngineDeadError()
        self.seen.append((request_id, prompt_token_ids, options))
        self.running.add(request_id)
        try:
            seed = options.seed if options.seed is not None else 1234
            rngs = [random.Random(f"{seed}-{i}-{len(prompt_token_ids)}") for i in range(options.n)]
            texts = [""] * options.n
            done = [False] * options.n
            for step in range(options.max_tokens):
                if self.fail_after is not None and step >= self.fail_after:
                    raise self.fail_with("fake engine failure with secret internals")
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                else:
                    await asyncio.sleep(0)
                deltas = []
                for i in range(options.n):
                    if done[i]:
                        continue
                    token = self._choose(rngs[i], step, options)
                    text = self.tokenizer.decode([token])
                    finish = None
                    reason: int | str | None = None
                    if token in options.stop_token_ids:
                        text, finish, reason = "", "stop", token
                    else:
                        combined = texts[i] + text
                        hit = [(combined.find(s), s) for s in options.stop if s in combined]
                        if hit:
                            at, reason = min(hit)
                            text, finish = combined[:at][len(texts[i]) :], "stop"
                    if finish is None and step == options.max_tokens - 1:
                        finish = "length"
                    texts[i] += text
                    done[i] = finish is not None
                    logprobs = None
                    if options.logprobs is not None:
                        top = tuple(
                            (t, self.tokenizer.decode([t]), -1.0 - j)
                            for j, t in enumerate(self.word_ids[: options.logprobs])
                        )
                        logprobs = [TokenLogprob(token, self.tokenizer.decode([token]), -1.5, top)]
                    deltas.append(SequenceDelta(i, text, [token], logprobs, finish, reason))
                finished = all(done)
                prompt_lps = None
                if step == 0 and options.prompt_logprobs is not None:
                    prompt_lps = self._prompt_logprobs(prompt_token_ids, options.prompt_logprobs)
                yield EngineOutput(sequences=deltas, finished=finished, prompt_logprobs=prompt_lps)
                if finished:
                    return
        finally:
            self.running.discard(request_id)

    def _prompt_logprobs(self, ids: list[int], k: int) -> list[TokenLogprob | None]:
        """The first prompt token has none, as in vLLM; the others a fixed -2.0, rank 5."""
        top = tuple(
            (t, self.tokenizer.decode([t]), -1.0 - j) for j, t in enumerate(self.word_ids[:k])
        )
        return [None] + [
            TokenLogprob(t, self.tokenizer.decode([t]), -2.0, top, rank=5) for t in ids[1:]
        ]

    async def abort(self, request_id: str) -> None:
        self.running.discard(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError()

    def num_unfinished_requests(self) -> int:
        return len(self.running)

    async def shutdown(self) -> None:
        self.running.clear()
