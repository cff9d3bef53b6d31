"""Engine outputs to OpenAI response bodies and stream chunks (completions and chat).

Streamed and non-streamed responses are built from the same deltas by the same code, so the
concatenated stream equals the full response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from deepseek_serve.engine import EngineOutput, SequenceDelta, TokenLogprob
from deepseek_serve.http.streaming import json_bytes


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    started: bool = False
    text_offset: int = 0
    token_ids: list[int] = field(default_factory=list)
    ids_sent: bool = False
    # Streamed return_token_ids: ids of deltas that made no chunk (a token ending inside a UTF-8
    # character has no text yet), sent with the choice's next chunk.
    unsent_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Formatter:
    """Shared bookkeeping; subclasses say how a choice looks on the wire."""

    request_id: str
    created: int
    model: str
    prompt_lens: list[int]
    n: int
    want_logprobs: bool
    include_usage: bool = False
    continuous_usage: bool = False
    object_name: str = "text_completion"
    chunk_object_name: str = "text_completion"
    # False: choices carry no "logprobs" key at all (the deployment guide's /api/v1 shape).
    logprobs_field: bool = True
    # Set: on full responses, and on a stream's last chunk (the usage chunk if there is one,
    # else each chunk that finishes a choice), as vLLM does.
    system_fingerprint: str | None = None
    # DeepSeek's usage counters: prompt tokens found in the prefix cache and those computed.
    cache_usage: bool = False
    # vLLM's return_token_ids: choices carry token_ids; prompt_token_ids per prompt
    prompt_token_ids: list[list[int]] | None = None
    return_token_ids: bool = False
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: "token_id:N" in logprobs
    # Where a full response puts prompt_token_ids: on each choice (completions) or on the body
    # (chat), as vLLM does.
    prompt_ids_on_body: bool = False
    want_prompt_logprobs: bool = False  # vLLM's prompt_logprobs (full responses only)
    choices: list[_Choice] = field(init=False)
    _cached: list[int] = field(init=False)  # prompt tokens found in the prefix cache, per prompt
    _prompt_lps: list[Any] = field(init=False)  # vLLM's prompt_logprobs, per prompt
    # Only a full (non-streamed) response needs the text and logprobs kept; a stream sends them.
    _keep: bool = field(default=False, init=False)
    _head: bytes | None = field(default=None, init=False)  # the start every chunk shares

    def __post_init__(self) -> None:
        self.choices = [_Choice() for _ in range(len(self.prompt_lens) * self.n)]
        self._cached = [0] * len(self.prompt_lens)
        self._prompt_lps = [None] * len(self.prompt_lens)

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_lens)
        completion = sum(c.tokens for c in self.choices)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.cache_usage:
            hit = min(sum(self._cached), prompt)
            usage["prompt_cache_hit_tokens"] = hit
            usage["prompt_cache_miss_tokens"] = prompt - hit
        return usage

    # --- hooks ---
    def first_delta(self, index: int, prompt_index: int, out: EngineOutput) -> list[dict[str, Any]]:
        return []

    def chunk_choice(
        self, index: int, text: str, logprobs: Any, finish: str | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        raise NotImplementedError

    def logprob_entries(self, choice: _Choice, entries: list[TokenLogprob]) -> Any:
        raise NotImplementedError

    def merge_logprobs(self, parts: list[Any]) -> Any:
        raise NotImplementedError

    def token_name(self, token_id: int, text: str) -> str:
        return f"token_id:{token_id}" if self.tokens_as_ids and token_id >= 0 else text

    # --- shared ---
    def _update(
        self, prompt_index: int, out: EngineOutput, seq: SequenceDelta
    ) -> tuple[int, list[bytes], str, Any]:
        index = prompt_index * self.n + seq.index
        choice = self.choices[index]
        pre: list[bytes] = []
        if out.num_cached_tokens:
            self._cached[prompt_index] = out.num_cached_tokens
        if self.want_prompt_logprobs and out.prompt_logprobs is not None:
            self._prompt_lps[prompt_index] = [_prompt_logprob(e) for e in out.prompt_logprobs]
        if not choice.started:
            choice.started = True
            # Framed now: with continuous usage, the opening chunk counts no completion tokens.
            pre = [
                self._chunk([c], top=self._opening_extra(prompt_index) if j == 0 else None)
                for j, c in enumerate(self.first_delta(index, prompt_index, out))
            ]
        choice.tokens += len(seq.token_ids)
        logprobs = None
        if self.want_logprobs and seq.logprobs is not None:
            logprobs = self.logprob_entries(choice, seq.logprobs)
        self._record(choice, seq.text, logprobs, seq.token_ids)
        if seq.finish_reason is not None:
            choice.finish_reason = seq.finish_reason
        return index, pre, seq.text, logprobs

    def _record(
        self, choice: _Choice, text: str, logprobs: Any, token_ids: list[int] | None = None
    ) -> None:
        if self._keep:
            choice.text.append(text)
            if logprobs is not None:
                choice.logprobs.append(logprobs)
            if token_ids:
                choice.token_ids.extend(token_ids)

    def _chunk(
        self,
        choices: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
        *,
        last: bool = False,
        top: dict[str, Any] | None = None,
    ) -> bytes:
        # The fields every chunk shares are serialized once per response; only the choices (and
        # usage) are encoded per token. The bytes equal sse_frame() of the whole chunk.
        if self._head is None:
            self._head = b"".join(
                (
                    b'data: {"id":',
                    json_bytes(self.request_id),
                    b',"object":',
                    json_bytes(self.chunk_object_name),
                    b',"created":',
                    json_bytes(self.created),
                    b',"model":',
                    json_bytes(self.model),
                    b',"choices":',
                )
            )
        parts = [self._head, json_bytes(self._shaped(choices))]
        if last and self.system_fingerprint is not None:
            parts.append(b',"system_fingerprint":')
            parts.append(json_bytes(self.system_fingerprint))
        for key, value in (top or {}).items():
            parts.append(b"," + json_bytes(key) + b":" + json_bytes(value))
        if self.include_usage:
            parts.append(b',"usage":')
            parts.append(
                json_bytes(
                    usage if usage is not None or not self.continuous_usage else self.usage()
                )
            )
        parts.append(b"}\n\n")
        return b"".join(parts)

    def _opening_extra(self, prompt_index: int) -> dict[str, Any] | None:
        """Body-level fields of a stream's opening chunk: chat's prompt_token_ids (vLLM)."""
        if self.return_token_ids and self.prompt_ids_on_body and self.prompt_token_ids:
            return {"prompt_token_ids": self.prompt_token_ids[prompt_index]}
        return None

    def _shaped(self, choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.logprobs_field:
            for choice in choices:
                choice.pop("logprobs", None)
        return choices

    async def frames(
        self, outputs: AsyncIterator[tuple[int, EngineOutput]]
    ) -> AsyncIterator[bytes]:
        # One write per engine output, whatever number of chunks it makes, and the usage chunk
        # rides with the last one: fewer syscalls and client wake-ups per token.
        unfinished = len(self.prompt_lens)
        for_usage = self.include_usage
        async for prompt_index, out in outputs:
            parts: list[bytes] = []
            for seq in out.sequences:
                index, pre, text, logprobs = self._update(prompt_index, out, seq)
                parts.extend(pre)
                if not (text or logprobs or seq.finish_reason):
                    if self.return_token_ids:
                        self.choices[index].unsent_ids.extend(seq.token_ids)
                else:
                    choice = self.chunk_choice(index, text, logprobs, seq.finish_reason)
                    if self.return_token_ids:
                        self._add_stream_ids(choice, prompt_index, seq)
                    parts.append(
                        self._chunk(
                            [choice],
                            last=seq.finish_reason is not None and not self.include_usage,
                        )
                    )
            if out.finished:
                unfinished -= 1
                if unfinished == 0 and for_usage:
                    for_usage = False
                    parts.append(self._chunk([], self.usage(), last=True))
            if parts:
                yield b"".join(parts)
        if for_usage:
            yield self._chunk([], self.usage(), last=True)

    def _add_stream_ids(
        self, choice: dict[str, Any], prompt_index: int, seq: SequenceDelta
    ) -> None:
        # vLLM's stream: the prompt's ids once, on the choice's first chunk; then id deltas.
        state = self.choices[prompt_index * self.n + seq.index]
        if not state.ids_sent and self.prompt_token_ids is not None and not self.prompt_ids_on_body:
            state.ids_sent = True
            choice["prompt_token_ids"] = self.prompt_token_ids[prompt_index]
        choice["token_ids"] = [*state.unsent_ids, *seq.token_ids]
        state.unsent_ids.clear()

    async def collect(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> dict[str, Any]:
        self._keep = True
        async for prompt_index, out in outputs:
            for seq in out.sequences:
                self._update(prompt_index, out, seq)
        choices = [self.final_choice(i, c) for i, c in enumerate(self.choices)]
        if self.return_token_ids:
            for i, (wire, state) in enumerate(zip(choices, self.choices, strict=True)):
                if self.prompt_token_ids is not None and not self.prompt_ids_on_body:
                    wire["prompt_token_ids"] = self.prompt_token_ids[i // self.n]
                wire["token_ids"] = state.token_ids
        if self.want_prompt_logprobs and not self.prompt_ids_on_body:
            for i, wire in enumerate(choices):
                wire["prompt_logprobs"] = self._prompt_lps[i // self.n]
        body: dict[str, Any] = {
            "id": self.request_id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "choices": self._shaped(choices),
            "usage": self.usage(),
        }
        if self.system_fingerprint is not None:
            body["system_fingerprint"] = self.system_fingerprint
        if self.return_token_ids and self.prompt_ids_on_body and self.prompt_token_ids:
            body["prompt_token_ids"] = self.prompt_token_ids[0]
        if self.want_prompt_logprobs and self.prompt_ids_on_body:
            body["prompt_logprobs"] = self._prompt_lps[0]
        return body


@dataclass(slots=True)
class CompletionFormatter(Formatter):
    echo_texts: list[str] | None = None
    prompt_token_texts: list[list[str]] | None = None

    def first_delta(self, index: int, prompt_index: int, out: EngineOutput) -> list[dict[str, Any]]:
        choice = self.choices[index]
        if self.echo_texts is None:
            return []
        text = self.echo_texts[prompt_index]
        logprobs = None
        if self.want_logprobs and out.prompt_logprobs is not None and self.prompt_token_texts:
            names = self.prompt_token_texts[prompt_index]
            entries = [
                lp if lp is not None else TokenLogprob(-1, names[i], float("nan"))
                for i, lp in enumerate(out.prompt_logprobs)
            ]
            logprobs = self.logprob_entries(choice, entries)
        self._record(choice, text, logprobs)
        return [self.chunk_choice(index, text, logprobs, None)]

    def chunk_choice(
        self, index: int, text: str, logprobs: Any, finish: str | None
    ) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        logprobs = self.merge_logprobs(choice.logprobs) if self.want_logprobs else None
        return self.chunk_choice(index, "".join(choice.text), logprobs, choice.finish_reason)

    def logprob_entries(self, choice: _Choice, entries: list[TokenLogprob]) -> Any:
        tokens, values, tops, offsets = [], [], [], []
        for e in entries:
            tokens.append(self.token_name(e.token_id, e.token))
            values.append(None if e.logprob != e.logprob else e.logprob)  # NaN: no logprob
            # The sampled token comes first, then the top ones: logprobs 0 gives the sampled
            # token alone, logprobs N up to N+1 entries (vLLM's and OpenAI's shape).
            tops.append(
                None
                if e.token_id < 0
                else {
                    self.token_name(e.token_id, e.token): e.logprob,
                    **{self.token_name(i, t): lp for i, t, lp in e.top},
                }
            )
            offsets.append(choice.text_offset)
            choice.text_offset += len(e.token)
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def merge_logprobs(self, parts: list[Any]) -> Any:
        merged: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for part in parts:
            for key, values in merged.items():
                values.extend(part[key])
        return merged


@dataclass(slots=True)
class ChatFormatter(Formatter):
    object_name: str = "chat.completion"
    chunk_object_name: str = "chat.completion.chunk"
    role: str = "assistant"
    prompt_ids_on_body: bool = True
    echo_text: str | None = None  # vLLM's chat echo: the last message's content, first

    def first_delta(self, index: int, prompt_index: int, out: EngineOutput) -> list[dict[str, Any]]:
        first = [
            {
                "index": index,
                "delta": {"role": self.role, "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
        if self.echo_text:
            self._record(self.choices[index], self.echo_text, None)
            first.append(self.chunk_choice(index, self.echo_text, None, None))
        return first

    def chunk_choice(
        self, index: int, text: str, logprobs: Any, finish: str | None
    ) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": self.role, "content": "".join(choice.text)},
            "logprobs": self.merge_logprobs(choice.logprobs) if self.want_logprobs else None,
            "finish_reason": choice.finish_reason,
        }

    def logprob_entries(self, choice: _Choice, entries: list[TokenLogprob]) -> Any:
        return {
            "content": [
                {
                    **_chat_token(self.token_name(e.token_id, e.token), e.logprob),
                    "top_logprobs": [_chat_token(self.token_name(i, t), lp) for i, t, lp in e.top],
                }
                for e in entries
            ]
        }

    def merge_logprobs(self, parts: list[Any]) -> Any:
        return {"content": [entry for part in parts for entry in part["content"]]}


def _prompt_logprob(entry: TokenLogprob | None) -> dict[str, Any] | None:
    """vLLM's prompt_logprobs entry: the prompt's token and the top ones, by id (the first
    prompt token has none)."""
    if entry is None:
        return None
    out = {
        str(entry.token_id): {
            "logprob": max(entry.logprob, -9999.0),  # vLLM clamps -inf so that JSON can carry it
            "rank": entry.rank,
            "decoded_token": entry.token,
        }
    }
    for rank, (token_id, text, logprob) in enumerate(entry.top, 1):
        out.setdefault(
            str(token_id),
            {"logprob": max(logprob, -9999.0), "rank": rank, "decoded_token": text},
        )
    return out


def _chat_token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


@dataclass(frozen=True, slots=True)
class ContextReport:
    """A response builder that adds ``tokens_dropped`` (the repository packing report) to a full
    body; a stream has it in the ``X-Context-Tokens-Dropped`` header only."""

    inner: CompletionFormatter
    tokens_dropped: int

    def frames(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> AsyncIterator[bytes]:
        return self.inner.frames(outputs)

    async def collect(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> dict[str, Any]:
        body = await self.inner.collect(outputs)
        body["tokens_dropped"] = self.tokens_dropped
        return body
