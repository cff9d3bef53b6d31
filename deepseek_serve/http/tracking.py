"""The engine as the server uses it: the real one, plus bookkeeping on every request.

``TrackedEngine`` wraps any ``Engine``. It knows which engine requests are running, times them
(time to first token, inter-token latency), counts their tokens into the metrics and into the
HTTP request that owns them (for token quotas), records why unfinished ones ended, and can end
them all at shutdown: each then raises ``ShuttingDownError`` to its stream, which becomes an
error frame and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from deepseek_serve.engine import (
    Capacity,
    Engine,
    EngineOutput,
    ModelLimits,
    SamplingOptions,
    TokenizerCheck,
)
from deepseek_serve.errors import APIError, InvalidRequestError, ShuttingDownError
from deepseek_serve.http.observability import Metrics, current_request


@dataclass(slots=True)
class TrackedEngine:
    inner: Engine
    metrics: Metrics
    _running: set[str] = field(default_factory=set)
    _shut: set[str] = field(default_factory=set)  # ended by the shutdown deadline

    @property
    def limits(self) -> ModelLimits:
        return self.inner.limits

    async def start(self) -> None:
        await self.inner.start()

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        info = current_request()
        route = info.route if info is not None else "unmatched"
        m = self.metrics
        ttft, itl = m.ttft.labels(route), m.itl.labels(route)  # once, not per token
        m.prompt_tokens.labels(route).inc(len(prompt_token_ids))
        if info is not None:
            info.prompt_tokens += len(prompt_token_ids)
        start = last = time.perf_counter()
        generated = 0
        finished = False
        reason = "client_disconnect"
        self._running.add(request_id)
        m.waiting.inc()
        waiting = True
        try:
            async for out in self.inner.generate(request_id, prompt_token_ids, options):
                if request_id in self._shut:
                    raise _shut_down()
                now = time.perf_counter()
                tokens = sum(len(seq.token_ids) for seq in out.sequences)
                if tokens:
                    if waiting:
                        waiting = False
                        m.waiting.dec()
                        ttft.observe(now - start)
                    else:
                        itl.observe(now - last)
                    last = now
                    generated += tokens
                finished = out.finished
                yield out
            if not finished and request_id in self._shut:
                raise _shut_down()
        except InvalidRequestError:
            reason = "invalid"
            raise
        except APIError:
            reason = "engine_error"  # or "shutdown", set below
            raise
        finally:
            if waiting:
                m.waiting.dec()
            self._running.discard(request_id)
            if request_id in self._shut:
                self._shut.discard(request_id)
                reason = "shutdown"
            if not finished:
                known = info.abort_reason if info is not None else None
                m.aborted.labels(known or reason).inc()
            m.generation_tokens.labels(route).inc(generated)
            if info is not None:
                info.generated_tokens += generated

    async def end_all(self) -> int:
        """End every running request (the shutdown deadline): each stream gets
        ``ShuttingDownError``. Returns how many there were."""
        ids = list(self._running)
        self._shut.update(ids)
        await asyncio.gather(*(self.inner.abort(rid) for rid in ids))
        return len(ids)

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    async def check_health(self) -> None:
        await self.inner.check_health()

    def num_unfinished_requests(self) -> int:
        return self.inner.num_unfinished_requests()

    async def shutdown(self) -> None:
        await self.inner.shutdown()

    @property
    def self_healing(self) -> bool:
        return self.inner.self_healing

    async def capacity(self) -> Capacity | None:
        return await self.inner.capacity()

    async def check_tokenizer(self, check: TokenizerCheck) -> list[str] | None:
        return await self.inner.check_tokenizer(check)


def _shut_down() -> APIError:
    return ShuttingDownError("The server shut down before this request finished.")
