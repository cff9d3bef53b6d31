"""Per-key rate limits: requests per window (a moving window, on the ``limits`` library) and
tokens per window (a fixed window, kept here).

Tokens are reserved before generation starts: once a request is validated its reservation is
its prompt tokens plus ``max_tokens`` for each choice, all that it may use; a request whose
reservation does not fit in what the window has left waits (429 with Retry-After). When the
request ends, what it did not use is given back. So requests running together can never use
more than the limit between them, however many there are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from deepseek_serve.errors import InvalidRequestError, RateLimitError
from deepseek_serve.http.auth import ApiKey


@dataclass(slots=True, eq=False)
class _Window:
    start: float  # time.monotonic()
    used: int = 0  # reserved by running requests plus used by finished ones


@dataclass(frozen=True, slots=True)
class Reservation:
    key: ApiKey
    window: _Window  # the window it was taken from: a later window owes it nothing back
    tokens: int


class Quotas:
    def __init__(self) -> None:
        self._requests = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[str, RateLimitItem] = {}
        self._windows: dict[str, _Window] = {}  # token windows, by key name
        self._clock: Callable[[], float] = time.monotonic  # tests move it

    def _item(self, rate: str) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(rate)
        return item

    def _window(self, key: ApiKey, item: RateLimitItem) -> _Window:
        now = self._clock()
        window = self._windows.get(key.name)
        if window is None or now - window.start >= item.get_expiry():
            window = self._windows[key.name] = _Window(now)
        return window

    def _token_wait(self, window: _Window, item: RateLimitItem) -> float:
        return max(1.0, window.start + item.get_expiry() - self._clock())

    async def admit(self, key: ApiKey) -> None:
        """Count one request for ``key``; raise ``RateLimitError`` when it is over a limit (its
        token window spent, or its request limit reached)."""
        if key.token_limit is not None:
            item = self._item(key.token_limit)
            window = self._window(key, item)
            if window.used >= item.amount:
                raise RateLimitError(
                    f"Token rate limit {key.token_limit} reached for this key.",
                    retry_after=self._token_wait(window, item),
                    code="token_rate_limit_exceeded",
                )
        if key.request_limit is not None:
            item = self._item(key.request_limit)
            if not await self._requests.hit(item, "requests", key.name):
                stats = await self._requests.get_window_stats(item, "requests", key.name)
                raise RateLimitError(
                    f"Request rate limit {key.request_limit} reached for this key.",
                    retry_after=max(1.0, stats.reset_time - time.time()),
                )

    def reserve(self, key: ApiKey, tokens: int, *, param: str) -> Reservation | None:
        """Set aside ``tokens`` (all a validated request may use) from ``key``'s token window;
        None when the key has no token limit. ``param`` names the request's max_tokens."""
        if key.token_limit is None:
            return None
        item = self._item(key.token_limit)
        if tokens > item.amount:
            raise InvalidRequestError(
                f"This request may use {tokens} tokens (its prompt plus {param} for each "
                f"choice), more than this key's limit of {key.token_limit}; lower {param}.",
                param=param,
                code="token_rate_limit_exceeded",
            )
        window = self._window(key, item)
        if window.used + tokens > item.amount:
            left = max(0, item.amount - window.used)
            raise RateLimitError(
                f"This request may use {tokens} tokens (its prompt plus {param} for each "
                f"choice) and this key has {left} left of its limit {key.token_limit}.",
                retry_after=self._token_wait(window, item),
                code="token_rate_limit_exceeded",
            )
        window.used += tokens
        return Reservation(key, window, tokens)

    def settle(self, key: ApiKey, reservation: Reservation | None, used: int) -> None:
        """A request of ``key`` ended having used ``used`` tokens: give back what its
        reservation did not use (or charge what it had no reservation for)."""
        if key.token_limit is None:
            return
        if reservation is None:
            if used > 0:  # not reserved: charged after the fact, as it happened
                self._window(key, self._item(key.token_limit)).used += used
            return
        if self._windows.get(key.name) is reservation.window:
            window = reservation.window
            window.used = max(0, window.used + used - reservation.tokens)
