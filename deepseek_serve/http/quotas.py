"""Per-key rate limits: requests per window and tokens per window, on the ``limits`` library.

Requests use a moving window. Tokens are only known once a response is done, so a request is
let in while the key has any token budget left and its tokens are charged afterwards (a fixed
window, which records the charge even when it overshoots, so the next request waits).
"""

from __future__ import annotations

import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from deepseek_serve.errors import RateLimitError
from deepseek_serve.http.auth import ApiKey


class Quotas:
    def __init__(self) -> None:
        storage = MemoryStorage()
        self._requests = MovingWindowRateLimiter(storage)
        self._tokens = FixedWindowRateLimiter(storage)
        self._items: dict[str, RateLimitItem] = {}

    def _item(self, rate: str) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(rate)
        return item

    async def admit(self, key: ApiKey) -> None:
        """Count one request for ``key``; raise ``RateLimitError`` when it is over a limit."""
        if key.token_limit is not None:
            item = self._item(key.token_limit)
            if not await self._tokens.test(item, "tokens", key.name):
                raise RateLimitError(
                    f"Token rate limit {key.token_limit} reached for this key.",
                    retry_after=await self._reset_in(self._tokens, item, "tokens", key.name),
                    code="token_rate_limit_exceeded",
                )
        if key.request_limit is not None:
            item = self._item(key.request_limit)
            if not await self._requests.hit(item, "requests", key.name):
                raise RateLimitError(
                    f"Request rate limit {key.request_limit} reached for this key.",
                    retry_after=await self._reset_in(self._requests, item, "requests", key.name),
                )

    async def charge_tokens(self, key: ApiKey, tokens: int) -> None:
        if key.token_limit is not None and tokens > 0:
            await self._tokens.hit(self._item(key.token_limit), "tokens", key.name, cost=tokens)

    @staticmethod
    async def _reset_in(
        limiter: MovingWindowRateLimiter | FixedWindowRateLimiter,
        item: RateLimitItem,
        *ids: str,
    ) -> float:
        stats = await limiter.get_window_stats(item, *ids)
        return max(1.0, stats.reset_time - time.time())
