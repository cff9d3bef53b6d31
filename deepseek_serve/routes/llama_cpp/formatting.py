"""Engine outputs to llama.cpp's answers (``/completion``, ``/infill``), and its stop rules.

One result is an object, several (``n_cmpl`` > 1, or several prompts) an array of them, each
with its ``index``. Streams are ``data: {...}`` frames without ``[DONE]``: partial frames carry
the new ``content`` and its ``tokens``, then each result ends with a frame holding the final
object (``stop: true``, empty ``content``: the text went in the partial frames).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from deepseek_serve.engine import EngineOutput, SequenceDelta, TokenLogprob
from deepseek_serve.http.streaming import aclose, sse_frame

# llama.cpp clamps log(0) to -FLT_MAX: JSON has no -Infinity.
_MIN_LOGPROB = -3.4028234663852886e38


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


@dataclass(slots=True)
class _Cut:
    text: str = ""
    scan: int = 0
    done: bool = False


async def line_limits(
    outputs: AsyncIterator[tuple[int, EngineOutput]],
    n_indent: int,
    t_max_predict_ms: int,
    sequences: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[tuple[int, EngineOutput]]:
    """``outputs`` with each of its ``sequences`` cut by ``n_indent``, and ended at its first
    newline after ``t_max_predict_ms`` of generation. Once every sequence has ended, the
    iterator is closed (which aborts the engine request)."""
    cuts: dict[tuple[int, int], _Cut] = {}
    started = None
    try:
        async for i, out in outputs:
            started = clock() if started is None else started
            if not out.sequences:
                yield i, out
                continue
            kept = []
            for seq in out.sequences:
                cut = cuts.setdefault((i, seq.index), _Cut())
                if cut.done:
                    continue  # already ended here; the engine may still be producing it
                kept.append(seq)
                if _limit(cut, seq, n_indent, t_max_predict_ms, clock() - started):
                    seq.finish_reason, seq.stop_reason = "length", None
                cut.done = seq.finish_reason is not None
            out.sequences = kept
            if kept:
                yield i, out
            if sum(c.done for c in cuts.values()) >= sequences:
                return
    finally:
        await aclose(outputs)


def _limit(cut: _Cut, seq: SequenceDelta, n_indent: int, budget_ms: int, elapsed: float) -> bool:
    """Whether ``seq`` ends here by a line rule (its text is trimmed to the cut)."""
    before = len(cut.text)
    cut.text += seq.text
    if n_indent:
        at, cut.scan = indent_cut(cut.text, cut.scan, n_indent)
        if at is not None:
            seq.text = cut.text[before : max(at, before)]
            return True
    return bool(
        budget_ms and seq.finish_reason is None and "\n" in seq.text and elapsed * 1000 > budget_ms
    )


def _pick(body: dict[str, Any], paths: list[str] | None) -> dict[str, Any]:
    """llama.cpp's ``response_fields``: none or ``[]`` is everything; ``"timings/prompt_n"``
    is that value under that literal key; a field that does not exist is left out."""
    if not paths:
        return body
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


def _logprob(token_id: int, token: str, logprob: float) -> dict[str, Any]:
    return {
        "id": token_id,
        "token": token,
        "bytes": list(token.encode()),
        "logprob": max(logprob, _MIN_LOGPROB),
    }


def completion_probabilities(entries: list[TokenLogprob], n_probs: int) -> list[dict[str, Any]]:
    """llama.cpp's ``completion_probabilities``: each token with its ``n_probs`` best."""
    return [
        {
            **_logprob(e.token_id, e.token, e.logprob),
            "top_logprobs": [_logprob(tid, tok, lp) for tid, tok, lp in e.top[:n_probs]],
        }
        for e in entries
    ]


@dataclass(slots=True)
class _Result:
    parts: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    probs: list[dict[str, Any]] = field(default_factory=list)
    predicted: int = 0
    finish: str | None = None
    stop_reason: int | str | None = None


@dataclass(slots=True)
class LlamaFormatter:
    """Engine outputs to llama.cpp bodies and stream frames, for ``prompt_tokens`` prompts
    with ``n`` completions each."""

    model: str
    prompt_tokens: list[int]
    settings: dict[str, Any]
    n: int = 1
    tokens_dropped: int | None = None  # /infill: context left out to fit the window
    response_fields: list[str] | None = None
    warmup: bool = False  # n_predict 0: the prompt is processed, nothing is returned
    return_tokens: bool = False
    n_probs: int = 0
    prompt_text: Callable[[int], str] | None = None  # the processed prompt, asked only if shown
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    first: float | None = None
    ended: float | None = None
    cached: dict[int, int] = field(default_factory=dict)  # prompt index -> cached tokens
    results: list[_Result] = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.results = [_Result() for _ in range(len(self.prompt_tokens) * self.n)]

    def _take(self, prompt_index: int, out: EngineOutput) -> list[tuple[int, SequenceDelta]]:
        now = self.clock()
        if self.first is None:
            self.first = now
        self.cached.setdefault(prompt_index, out.num_cached_tokens)
        self.ended = now
        taken = []
        for seq in out.sequences:
            index = prompt_index * self.n + seq.index
            result = self.results[index]
            if seq.finish_reason is not None:
                result.finish, result.stop_reason = seq.finish_reason, seq.stop_reason
            if self.warmup:
                continue
            result.predicted += len(seq.token_ids)
            taken.append((index, seq))
        return taken

    def _partial(self, index: int, seq: SequenceDelta) -> dict[str, Any]:
        result = self.results[index]
        frame: dict[str, Any] = {
            "index": index,
            "content": seq.text,
            "tokens": seq.token_ids,  # llama.cpp fills them in streams whatever return_tokens
            "stop": False,
            "id_slot": -1,
            "tokens_predicted": result.predicted,
            "tokens_evaluated": self.prompt_tokens[index // self.n],
        }
        if self.n_probs and seq.logprobs:
            frame["completion_probabilities"] = completion_probabilities(seq.logprobs, self.n_probs)
        return frame

    def final(self, index: int, content: str, *, stream: bool = False) -> dict[str, Any]:
        result = self.results[index]
        word = result.stop_reason if isinstance(result.stop_reason, str) else ""
        stop_type = ("word" if word else "eos") if result.finish == "stop" else "limit"
        prompt = index // self.n
        body: dict[str, Any] = {
            "index": index,
            "content": content,
            "tokens": result.tokens if self.return_tokens and not stream else [],
            "id_slot": -1,
            "stop": True,
            "model": self.model,
            "tokens_predicted": result.predicted,
            "tokens_evaluated": self.prompt_tokens[prompt],
            "generation_settings": self.settings,
            "has_new_line": "\n" in content,
            "truncated": bool(self.tokens_dropped),
            "stop_type": stop_type,
            "stopping_word": word,
            "tokens_cached": self.cached.get(prompt, 0),
            "timings": self._timings(prompt, result.predicted),
        }
        wanted = self.response_fields
        if self.prompt_text is not None and (not wanted or "prompt" in wanted):
            body["prompt"] = self.prompt_text(prompt)  # a detokenization: only when shown
        if self.tokens_dropped is not None:
            body["tokens_dropped"] = self.tokens_dropped
        if self.n_probs and not stream:
            body["completion_probabilities"] = result.probs
        return _pick(body, wanted)

    def _timings(self, prompt: int, predicted: int) -> dict[str, float]:
        first = self.first if self.first is not None else self.clock()
        ended = self.ended if self.ended is not None else first
        cached = self.cached.get(prompt, 0)
        prompt_n = max(self.prompt_tokens[prompt] - cached, 0)
        prompt_ms = (first - self.started) * 1000
        predicted_ms = (ended - first) * 1000
        return {
            "cache_n": cached,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1000 * prompt_n / prompt_ms if prompt_ms > 0 else 0.0,
            "predicted_n": predicted,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted if predicted else 0.0,
            "predicted_per_second": 1000 * predicted / predicted_ms if predicted_ms > 0 else 0.0,
        }

    def nothing(self) -> Any:
        """The answer of a warm-up that never reached the engine."""
        return self._one_or_many([self.final(i, "") for i in range(len(self.results))])

    @staticmethod
    def _one_or_many(bodies: list[dict[str, Any]]) -> Any:
        return bodies[0] if len(bodies) == 1 else bodies

    async def frames(
        self, outputs: AsyncIterator[tuple[int, EngineOutput]]
    ) -> AsyncIterator[bytes]:
        async for prompt_index, out in outputs:
            for index, seq in self._take(prompt_index, out):
                if seq.text or seq.token_ids:  # as llama.cpp: a frame per token, text or not
                    yield sse_frame(self._partial(index, seq))
        for index in range(len(self.results)):
            yield sse_frame(self.final(index, "", stream=True))

    async def collect(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> Any:
        async for prompt_index, out in outputs:
            for index, seq in self._take(prompt_index, out):
                result = self.results[index]
                result.parts.append(seq.text)
                if self.return_tokens:
                    result.tokens.extend(seq.token_ids)
                if self.n_probs and seq.logprobs:
                    result.probs.extend(completion_probabilities(seq.logprobs, self.n_probs))
        return self._one_or_many(
            [self.final(i, "".join(r.parts)) for i, r in enumerate(self.results)]
        )
